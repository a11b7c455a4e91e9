"""`neuronova stack up` alone, on a fresh folder, is a working platform: a study a modality sends
is read by the AI with no other command (the deployments are registered by `stack up`), and a
component that runs but cannot do its job is shown `degraded` with the reason, never `up`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from neuronova.demo import send_by_cstore, wait_for_reading
from neuronova.sample_mr import SAMPLE_MR_SEED, write_sample_mr_study
from neuronova.stack.supervisor import LocalStack

pytestmark = pytest.mark.integration

ARRIVAL_DEPLOYMENT = "process_arrival/on-arrival"
GPU_DEPLOYMENT = "run_inference/one-study"


def test_a_study_sent_by_cstore_is_read_by_the_ai_after_stack_up_alone(
    full_stack: LocalStack, tmp_path: Path
) -> None:
    settings = full_stack.settings
    status = full_stack.status()
    assert {n: d["state"] for n, d in status["components"].items()} == {
        n: "up" for n in status["components"]
    }
    files, _mask = write_sample_mr_study(tmp_path / "mr", seed=SAMPLE_MR_SEED + 11)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    sent = time.monotonic()
    send_by_cstore(settings, files)
    arrivals, reading = wait_for_reading(settings, study_uid, timeout_s=400)
    assert reading is not None, _logs(full_stack)
    print(f"\nstack up alone: sent → read by the AI in {time.monotonic() - sent:.0f} s")
    assert reading.lesion_count >= 1 and reading.fhir_report_id
    assert all(a.state == "done" for a in arrivals), arrivals


def test_a_watcher_or_worker_without_deployments_is_degraded_until_stack_up(
    full_stack: LocalStack,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = full_stack.settings
    api = {
        PREFECT_API_URL: settings.prefect_api_url,
        PREFECT_API_AUTH_STRING: settings.stack_prefect_auth_string(),
    }
    try:
        with temporary_settings(api), get_client(sync_client=True) as client:
            for name in (ARRIVAL_DEPLOYMENT, GPU_DEPLOYMENT):
                client.delete_deployment(client.read_deployment_by_name(name).id)
        status = _wait_for(full_stack, lambda c: c["arrivals"]["state"] == "degraded")
        arrivals, gpu = status["components"]["arrivals"], status["components"]["worker-gpu"]
        assert f"deployment {ARRIVAL_DEPLOYMENT} is not registered" in arrivals["error"]
        assert not arrivals["healthy"] and status["up"] is False
        assert gpu["state"] == "degraded" and "no deployment on work pool gpu" in gpu["error"]
        assert status["components"]["worker-cpu"]["state"] == "up"  # its other deployments
    finally:
        full_stack.up()  # registers them again, as an operator's `stack up` does
    status = _wait_for(full_stack, lambda c: c["arrivals"]["state"] == "up")
    assert status["up"] is True, status["components"]


def _wait_for(stack: LocalStack, condition: Any, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = stack.status()
        if condition(status["components"]):
            return status
        assert time.monotonic() < deadline, status["components"]
        time.sleep(1)


def _logs(stack: LocalStack) -> str:
    names = ("arrivals", "worker-cpu", "worker-gpu")
    return "\n".join(
        f"--- {n}\n" + stack.log_path(stack.by_name[n]).read_text()[-3000:] for n in names
    )
