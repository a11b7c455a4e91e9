"""`neuronova deploy` against a real Prefect server, and a real worker that runs a triggered
deployment to completion and then stops on its signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import Settings
from neuronova.stack import LocalStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_server(stack_settings: Settings) -> Iterator[str]:
    """The stack's Prefect server (the same code as `neuronova stack up`), as the API in use."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = LocalStack(stack_settings)
    stack.up(["prefect"])
    with temporary_settings({PREFECT_API_URL: stack_settings.prefect_api_url}):
        yield stack_settings.prefect_api_url
    stack.down(["prefect"])


def test_deploy_registers_the_pools_and_every_deployment(
    prefect_server: str, stack_settings: Settings
) -> None:
    from prefect.client.orchestration import get_client

    from deployments.work_pools import register_deployments

    registered = register_deployments(stack_settings)
    again = register_deployments(stack_settings)  # registering twice updates in place
    assert again == registered
    with get_client(sync_client=True) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        assert pools["gpu"].concurrency_limit == stack_settings.gpu_pool_concurrency == 1
        assert pools["cpu"].concurrency_limit is None
        deployments = {name: client.read_deployment(i) for name, i in registered.items()}
    assert deployments["run_inference/one-study"].work_pool_name == "gpu"
    others = {d.work_pool_name for n, d in deployments.items() if not n.startswith("run_inference")}
    assert others == {"cpu"}
    nightly = deployments["check_htj2k/archive-nightly"]
    assert nightly.schedules[0].schedule.cron == stack_settings.htj2k_check_cron  # type: ignore[union-attr]
    assert set(deployments) >= {"ingest_study/on-demand", "sync_patients/emr-scheduled"}


def test_a_worker_runs_a_triggered_deployment_and_stops(
    prefect_server: str, stack_settings: Settings, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from deployments.work_pools import register_deployments

    register_deployments(stack_settings)
    env = os.environ | {"PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "cpu"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        empty = tmp_path / "inbox"
        empty.mkdir()
        started = time.monotonic()
        run = run_deployment("ingest_study/on-demand", parameters={"path": str(empty)}, timeout=240)
        waited = time.monotonic() - started
        assert run.state is not None and run.state.type == StateType.COMPLETED, (
            tmp_path / "worker.log"
        ).read_text()[-3000:]
        assert run.start_time is not None and run.expected_start_time is not None
        delay = (run.start_time - run.expected_start_time).total_seconds()
        print(f"\ntriggered → running in {delay:.1f} s; completed after {waited:.1f} s")
    finally:
        # A worker needs more than one signal to stop: SIGINT up to three times, then SIGKILL.
        for _ in range(3):
            if worker.poll() is not None:
                break
            os.killpg(worker.pid, signal.SIGINT)
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
    assert worker.returncode == 0, "the worker did not stop on SIGINT"
