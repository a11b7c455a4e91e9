"""A flow run whose process died is marked Crashed, so that its work is started again.

A worker killed mid-study (OOM, a lost machine, `kill -9`) leaves its run Running on the server
for ever: nobody is left to report the end. Every run a worker starts sends a heartbeat event
every `flow_heartbeat_s` (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set for every worker: local stack
and compose); the automation registered here with the deployments watches each run that has
sent one, and marks it Crashed when neither another heartbeat nor a final state came within
`flow_crashed_after_s` (Prefect's documented zombie-run automation, on our own server).
Crashed is final: the arrival watcher then submits that arrival again (tasks/archive/arrivals.py),
and a re-run is safe (the check restores originals an interrupted swap left).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from common.settings import Settings

log = logging.getLogger(__name__)

AUTOMATION_NAME = "neuronova: crash runs whose process died"
HEARTBEAT = "prefect.flow-run.heartbeat"
_FINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def crashed_runs_automation(settings: Settings) -> AutomationCore:
    """The automation, from the settings (registering again updates it in place)."""
    silent = settings.flow_crashed_after_s
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"A flow run with no heartbeat and no final state for {silent} s is marked Crashed"
            " (its process died); NeuroNova's arrival watcher then starts its work again."
        ),
        enabled=True,
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            after={HEARTBEAT},
            expect={HEARTBEAT, *(f"prefect.flow-run.{state}" for state in _FINAL_EVENTS)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silent),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                message=f"no heartbeat for {silent} s: the process running this flow died",
                force=False,
            )
        ],
    )


def ensure_crashed_runs_automation(settings: Settings) -> UUID:
    """Create the automation, or bring an existing one in line with the settings."""
    automation = crashed_runs_automation(settings)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)
        if not existing:
            created = client.create_automation(automation)
            log.info("automation %r created (%s)", AUTOMATION_NAME, created)
            return created
        first, *duplicates = existing
        # Only when it differs: an update starts the proactive trigger afresh, so a run that
        # fell silent before it would never be crashed (`stack up` registers at every start,
        # e.g. while a worker killed mid-study is being replaced).
        if _core(first) != automation.model_dump(mode="json"):
            client.update_automation(first.id, automation)
            log.info("automation %r updated (%s)", AUTOMATION_NAME, first.id)
        for duplicate in duplicates:  # two registrations that raced: keep one
            client.delete_automation(duplicate.id)
        return first.id


def _core(automation: AutomationCore) -> dict[str, object]:
    """What was registered, comparable with what `crashed_runs_automation` would register."""
    return automation.model_dump(mode="json", include=set(AutomationCore.model_fields))
