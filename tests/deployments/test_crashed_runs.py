"""The automation that crashes runs whose process died, on the real Prefect server: registered
with the deployments, from the settings, once however often `neuronova deploy` runs. (That it
fires is the worker-killed test in tests/deployments/test_arrivals.py.)"""

from __future__ import annotations

import pytest

from common.settings import Settings
from deployments.crashed_runs import AUTOMATION_NAME, HEARTBEAT, ensure_crashed_runs_automation

pytestmark = pytest.mark.integration


def test_the_automation_follows_the_settings_and_is_registered_once(
    prefect_server: str, orthanc: Settings
) -> None:
    from prefect.client.orchestration import get_client

    first = ensure_crashed_runs_automation(orthanc.model_copy(update={"flow_crashed_after_s": 90}))
    again = ensure_crashed_runs_automation(orthanc)
    assert again == first
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(AUTOMATION_NAME)
        updated = client.request("GET", "/automations/{id}", path_params={"id": first}).json()[
            "updated"
        ]
    # Registered again unchanged (every `stack up` does): left alone, since an update starts
    # its trigger afresh and a run already silent would never be crashed.
    assert ensure_crashed_runs_automation(orthanc) == first
    with get_client(sync_client=True) as client:
        assert (
            client.request("GET", "/automations/{id}", path_params={"id": first}).json()["updated"]
            == updated
        )
    trigger = automation.trigger
    assert automation.enabled and trigger.posture == "Proactive"  # type: ignore[union-attr]
    assert trigger.within.total_seconds() == orthanc.flow_crashed_after_s  # type: ignore[union-attr]
    assert trigger.after == {HEARTBEAT}  # type: ignore[union-attr]
    assert "prefect.flow-run.Completed" in trigger.expect  # type: ignore[union-attr]
    (action,) = automation.actions
    assert action.type == "change-flow-run-state" and action.state == "CRASHED"  # type: ignore[union-attr]


def test_a_crash_window_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValueError, match="at least twice"):
        Settings(flow_heartbeat_s=60, flow_crashed_after_s=90)
