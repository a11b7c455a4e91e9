"""`neuronova watch-arrivals`: the long-lived process that turns Orthanc's stable studies into
`process_arrival/on-arrival` runs on the cpu pool (the steps: tasks/archive/arrivals.py).

It holds no state of its own (the cursor and the arrivals are in the database), so it can be
stopped and started at any time; run one per Orthanc. The local stack starts it as the
`arrivals` component; in compose it is the `arrivals` service.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from uuid import UUID

from common.errors import UpstreamError
from common.settings import Settings
from neuronova.stack.component import write_atomically
from tasks.archive.arrivals import (
    MISSING_RUN,
    Arrival,
    follow_submitted,
    read_new_arrivals,
    submit_due_arrivals,
)
from tasks.archive.orthanc import OrthancClient

log = logging.getLogger(__name__)

DEPLOYMENT = "process_arrival/on-arrival"


@dataclass(frozen=True)
class Pass:
    """What one pass of the watcher did, and what keeps it from doing its job (None: nothing)."""

    found: int
    submitted: int
    resubmitted: int
    problem: str | None = None


def submit_run(arrival: Arrival) -> str:
    """Create the arrival's flow run on the cpu pool (not waiting for it); its id."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(
            DEPLOYMENT,
            parameters={
                "orthanc_study_id": arrival.orthanc_study_id,
                "change_seq": arrival.change_seq,
            },
            timeout=0,
            idempotency_key=arrival.idempotency_key,
        )
    except ObjectNotFound:
        raise LookupError(
            f"deployment {DEPLOYMENT} is not registered: run `neuronova deploy`"
        ) from None
    return str(run.id)  # type: ignore[union-attr]  # sync call: a FlowRun


def run_state(flow_run_id: str, stuck_after_s: float | None = None) -> str | None:
    """A run's state type (COMPLETED, CRASHED …), MISSING for a run the server no longer has
    (deleted: it would otherwise hold its place for ever), or None when it cannot be read now.

    A run left PENDING for `stuck_after_s` is crashed here: a worker took it and stopped before
    starting it (`stack down` right after a study arrived). No worker takes a PENDING run again
    and it never sent a heartbeat, so neither a worker nor the crashed-runs automation would
    ever end it; Crashed, its arrival is submitted again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
            state = run.state
            if (
                state is not None
                and state.type == StateType.PENDING
                and stuck_after_s is not None
                and (datetime.now(UTC) - state.timestamp).total_seconds() > stuck_after_s
            ):
                message = f"pending for over {stuck_after_s:.0f} s: its worker stopped"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                log.warning("flow run %s %s; marked Crashed", flow_run_id, message)
                return StateType.CRASHED.value
    except ObjectNotFound:
        return MISSING_RUN
    except Exception as err:  # the server down: ask again on the next pass
        log.debug("cannot read flow run %s: %s", flow_run_id, err)
        return None
    return state.type.value if state is not None else None


def deployment_problem() -> str | None:
    """Why no run could be created now (the deployment missing, the Prefect API not answering),
    or None. Asked every pass, so that a watcher with nothing to do says so too."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
    except ObjectNotFound:
        return f"deployment {DEPLOYMENT} is not registered: run `neuronova deploy`"
    except Exception as err:
        return f"the Prefect API does not answer: {_short(err)}"
    return None


def watch_once(settings: Settings, client: OrthancClient) -> Pass:
    """One pass: read the change log, create runs for due arrivals, follow the submitted."""
    failures: list[str] = []

    def submit(arrival: Arrival) -> str:
        try:
            return submit_run(arrival)
        except Exception as err:
            failures.append(_short(err))
            raise

    found = read_new_arrivals(settings, client)
    # Runs that ended free their places before new ones are taken.
    resubmitted = follow_submitted(
        settings, partial(run_state, stuck_after_s=settings.flow_crashed_after_s)
    )
    submitted = submit_due_arrivals(settings, submit)
    problem = deployment_problem()
    if problem is None and failures:
        problem = f"cannot create runs: {failures[-1]}"
    if found or submitted or resubmitted:
        log.info(
            "arrivals: %d new, %d runs created, %d to run again", found, submitted, resubmitted
        )
    return Pass(found, submitted, resubmitted, problem)


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:300]


def write_heartbeat(path: Path, problem: str | None) -> None:
    """What the stack's health check reads (neuronova/stack/arrivals.py): the file's age says
    the watcher lives, its content what keeps it from doing its job."""
    write_atomically(path, json.dumps({"problem": problem}))


def watch(settings: Settings, heartbeat: Path | None = None) -> None:
    """Pass after pass until SIGTERM or SIGINT; Orthanc or the database failing is logged and
    tried again on the next pass, never fatal. `heartbeat` is touched after every pass."""
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    reported: str | None = None
    log.info(
        "watching %s for stable studies every %.1f s",
        settings.orthanc_url,
        settings.arrivals_poll_s,
    )
    with OrthancClient.from_settings(settings) as client:
        while not stop.is_set():
            problem: str | None
            try:
                problem = watch_once(settings, client).problem
            except UpstreamError as err:
                log.warning("Orthanc did not answer the change log: %s; next pass", err)
                problem = f"Orthanc does not answer its change log: {_short(err)}"
            except Exception as err:
                log.exception("arrival watcher pass failed; next pass")
                problem = f"a pass failed: {_short(err)}"
            if problem is not None and problem != reported:
                log.warning("arrival watcher degraded: %s", problem)
            reported = problem
            if heartbeat is not None:
                write_heartbeat(heartbeat, problem)
            stop.wait(settings.arrivals_poll_s)
    log.info("arrival watcher stopped")
