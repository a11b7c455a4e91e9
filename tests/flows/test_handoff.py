"""Ingest's hand-off through a deployment (`NEURONOVA_HANDOFF=deployment`): every way the
other run can go is reported in the ingest report, and none fails the ingest run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Scheduled, State

import flows.ingest_study as ingest
from common.settings import Settings

pytestmark = pytest.mark.integration  # a Prefect test harness

FAILED = {"status": "failed", "study_instance_uid": "1.2.3"}


def _hand_off(answer: Callable[..., FlowRun]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one hand-off inside a flow, with `answer` standing in for `run_deployment`; return
    the reported result and the calls made to `run_deployment`."""
    calls: list[dict[str, Any]] = []

    def fake_run_deployment(name: str, **kwargs: Any) -> FlowRun:
        calls.append({"name": name} | kwargs)
        return answer()

    @flow
    def ingest_like() -> dict[str, Any]:
        state = ingest._run_linked(
            Settings(),
            "run_inference/one-study",
            {"study_uid": "1.2.3"},
            lambda: Completed(data={"status": "completed", "in_process": True}),
        )
        return ingest._hand_off_result(state, "inference of 1.2.3", "neuronova infer", FAILED)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "run_deployment", fake_run_deployment)
        patch.setenv("NEURONOVA_HANDOFF", "deployment")
        patch.setenv("NEURONOVA_HANDOFF_TIMEOUT_S", "7")
        result = ingest_like()
    return result, calls


def _run(state: State[Any]) -> FlowRun:
    return FlowRun(flow_id=uuid4(), name="brisk-otter", state=state)


def test_a_completed_run_reports_its_result(prefect_harness: None) -> None:
    class Done(State[Any]):
        def result(self, *args: Any, **kwargs: Any) -> Any:
            return {"status": "completed", "lesion_count": 1}

    result, calls = _hand_off(lambda: _run(Done(type=Completed().type)))
    assert result == {"status": "completed", "lesion_count": 1}
    (call,) = calls
    assert call["parameters"] == {"study_uid": "1.2.3"} and call["timeout"] == 7
    assert "run_inference/one-study" in call["idempotency_key"]


def test_a_run_not_finished_in_time_is_reported_with_its_state(prefect_harness: None) -> None:
    result, _ = _hand_off(lambda: _run(Scheduled()))
    assert result["status"] == "running"
    assert "brisk-otter" in result["message"] and "Scheduled after 7 s" in result["message"]


def test_an_unregistered_deployment_runs_in_process(prefect_harness: None) -> None:
    def missing() -> FlowRun:
        raise ObjectNotFound(http_exc=Exception("404"))

    result, _ = _hand_off(missing)
    assert result == {"status": "completed", "in_process": True}


def test_an_api_failure_is_reported_not_raised(prefect_harness: None) -> None:
    def down() -> FlowRun:
        raise ConnectionError("Prefect API unreachable")

    result, _ = _hand_off(down)
    assert result["status"] == "failed"
    assert "could not run run_inference/one-study" in result["message"]
    assert "Prefect API unreachable" in result["message"]


def test_a_report_that_cannot_be_read_is_reported_not_raised(prefect_harness: None) -> None:
    class Unreadable(State[Any]):
        def result(self, *args: Any, **kwargs: Any) -> Any:
            raise FileNotFoundError("/data/prefect-results/abc")

    result, _ = _hand_off(lambda: _run(Unreadable(type=Completed().type)))
    assert result["status"] == "failed" and "could not be read" in result["message"]
