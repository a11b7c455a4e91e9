"""`neuronova watch-arrivals`: the long-lived process that turns Orthanc's stable studies into
`process_arrival/on-arrival` runs on the cpu pool (the steps: tasks/archive/arrivals.py).

It holds no state of its own (the cursor and the arrivals are in the database), so it can be
stopped and started at any time; run one per Orthanc. The local stack starts it as the
`arrivals` component; in compose it is the `arrivals` service.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from uuid import UUID

from common.errors import UpstreamError
from common.settings import Settings
from tasks.archive.arrivals import (
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
    """What one pass of the watcher did."""

    found: int
    submitted: int
    resubmitted: int


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
        raise LookupError(f"deployment {DEPLOYMENT} is not registered: run `make deploy`") from None
    return str(run.id)  # type: ignore[union-attr]  # sync call: a FlowRun


def run_state(flow_run_id: str) -> str | None:
    """A run's state type (COMPLETED, CRASHED …), or None when it cannot be read now."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
    except Exception as err:  # the server down: ask again on the next pass
        log.debug("cannot read flow run %s: %s", flow_run_id, err)
        return None
    return run.state.type.value if run.state is not None else None


def watch_once(settings: Settings, client: OrthancClient) -> Pass:
    """One pass: read the change log, create runs for due arrivals, follow the submitted."""
    found = read_new_arrivals(settings, client)
    submitted = submit_due_arrivals(settings, submit_run)
    resubmitted = follow_submitted(settings, run_state)
    if found or submitted or resubmitted:
        log.info(
            "arrivals: %d new, %d runs created, %d to run again", found, submitted, resubmitted
        )
    return Pass(found, submitted, resubmitted)


def watch(settings: Settings, heartbeat: Path | None = None) -> None:
    """Pass after pass until SIGTERM or SIGINT; Orthanc or the database failing is logged and
    tried again on the next pass, never fatal. `heartbeat` is touched after every pass."""
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "watching %s for stable studies every %.1f s",
        settings.orthanc_url,
        settings.arrivals_poll_s,
    )
    with OrthancClient.from_settings(settings) as client:
        while not stop.is_set():
            try:
                watch_once(settings, client)
            except UpstreamError as err:
                log.warning("Orthanc did not answer the change log: %s; next pass", err)
            except Exception:
                log.exception("arrival watcher pass failed; next pass")
            if heartbeat is not None:
                heartbeat.touch()
            stop.wait(settings.arrivals_poll_s)
    log.info("arrival watcher stopped")
