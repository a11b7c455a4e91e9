"""`neuronova deploy` against a real Prefect server, and a real worker that runs a triggered
deployment to completion and then stops on its signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.schemas.objects import FlowRun

from common.settings import Settings
from neuronova.prefect_env import prefect_results_dir
from neuronova.stack.component import Component
from neuronova.stack.supervisor import LocalStack
from neuronova.stack.workers import WORKER_CLIENT_MAX_RETRIES
from tests.support.dicom_factory import make_dataset, to_part10
from tests.support.processes import group_reaped, reaped

pytestmark = pytest.mark.integration


def _cli_env(prefect_server: str, stack_settings: Settings) -> dict[str, str]:
    """What an operator's shell holds to use Prefect's own CLI on the stack's server."""
    return {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_API_AUTH_STRING": stack_settings.stack_prefect_auth_string(),
    }


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
    assert nightly.schedules[0].schedule.cron == "30 2 * * *"  # type: ignore[union-attr]  # prefect.yaml's
    assert set(deployments) >= {"ingest_study/on-demand", "sync_patients/emr-scheduled"}


def test_prefects_own_cli_deploys_the_same_deployments_from_prefect_yaml(
    prefect_server: str, stack_settings: Settings
) -> None:
    """`prefect deploy --all --prefect-file deployments/prefect.yaml`, as an operator runs it from
    the project root, registers what `make deploy` registers: same flows, pools, schedules,
    tags, descriptions and pull step (updated in place, no second copy)."""
    from prefect.client.orchestration import get_client

    from common.settings import PROJECT_ROOT
    from deployments.work_pools import register_deployments

    def registered(ids: dict[str, UUID]) -> dict[str, dict[str, Any]]:
        with get_client(sync_client=True) as client:
            found = {name: client.read_deployment(i) for name, i in ids.items()}
        return {
            name: {
                "id": d.id,
                "pool": d.work_pool_name,
                "entrypoint": d.entrypoint,
                "tags": sorted(d.tags),
                "description": d.description,
                "crons": [s.schedule.cron for s in d.schedules],  # type: ignore[union-attr]
                "pull": d.pull_steps,
            }
            for name, d in found.items()
        }

    ids = register_deployments(stack_settings)
    ours = registered(ids)
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "deploy",
            "--all",
            "--prefect-file",
            "deployments/prefect.yaml",
        ],
        cwd=PROJECT_ROOT,
        env=os.environ | _cli_env(prefect_server, stack_settings) | {"PWD": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert registered(ids) == ours
    with get_client(sync_client=True) as client:
        assert len(client.read_deployments()) == len(ours)  # updated in place, none added


def test_the_stacks_worker_runs_a_triggered_deployment_and_stops(
    prefect_server: str, stack_settings: Settings, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from deployments.work_pools import register_deployments

    register_deployments(stack_settings)
    stack = LocalStack(stack_settings)
    worker = stack.by_name["worker-cpu"]
    try:
        status = stack.up(["worker-cpu"])
        assert status["components"]["worker-cpu"]["healthy"], status["components"]["worker-cpu"]
        empty = tmp_path / "inbox"
        empty.mkdir()
        started = time.monotonic()
        run = run_deployment("ingest_study/on-demand", parameters={"path": str(empty)}, timeout=240)
        waited = time.monotonic() - started
        assert run.state is not None and run.state.type == StateType.COMPLETED, _log(stack, worker)
        # The report comes back from the worker's result storage (flows.REPORTED).
        with _results_of(stack_settings):
            report = run.state.result()
        assert report["counts"] == {"stored": 0, "duplicate": 0, "quarantined": 0, "conflict": 0}
        assert run.start_time is not None and run.expected_start_time is not None
        delay = (run.start_time - run.expected_start_time).total_seconds()
        print(f"\ntriggered → running in {delay:.1f} s; completed after {waited:.1f} s")
    finally:
        pid = stack.running_pid(worker)
        stack.down(["worker-cpu"])  # SIGINT, SIGINT, SIGTERM, then SIGKILL
    assert pid is not None and reaped(pid)
    assert stack.status()["components"]["worker-cpu"]["running"] is False


def test_two_workers_on_one_pool_share_a_burst_of_20_ingest_runs(
    prefect_server: str, orthanc: Settings, tmp_path: Path
) -> None:
    """The stack's cpu worker and a second one (as an operator adds on another machine) take
    runs from the same pool: every run completes, each study is stored once, both did work."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from deployments.work_pools import register_deployments
    from tasks.archive.orthanc import OrthancClient

    register_deployments(orthanc)
    stack = LocalStack(orthanc)
    second_log = tmp_path / "second-worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_API_AUTH_STRING": orthanc.stack_prefect_auth_string(),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_CLIENT_MAX_RETRIES": WORKER_CLIENT_MAX_RETRIES,  # as docs/operations.md says
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_results_dir(orthanc)),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    folders = []
    for n in range(20):
        folder = tmp_path / f"burst-{n:02d}"
        folder.mkdir()
        ds = make_dataset(32, 32, modality="CT", seed=n, patient_id=f"NN-BURST-{n:02d}")
        (folder / "image.dcm").write_bytes(to_part10(ds))
        folders.append(folder)
    with second_log.open("w") as log:
        second = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "worker",
                "start",
                "--pool",
                "cpu",
                "--name",
                "second-cpu-worker",
                "--limit",
                str(orthanc.worker_limit),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        stack.up(["worker-cpu"])
        _wait_online("cpu", {"second-cpu-worker"}, second_log)  # both poll before the burst
        started = time.monotonic()
        runs = [
            run_deployment("ingest_study/on-demand", parameters={"path": str(f)}, timeout=0)
            for f in folders
        ]
        ids = {run.id for run in runs}
        deadline = time.monotonic() + 900  # 274 s measured; this machine is shared
        with get_client(sync_client=True) as client:
            while True:
                finished = [client.read_flow_run(i) for i in ids]
                if all(r.state is not None and r.state.is_final() for r in finished):
                    break
                assert time.monotonic() < deadline, "the burst did not finish in 15 minutes"
                time.sleep(2)
        elapsed = time.monotonic() - started
        states = {r.state.type for r in finished if r.state is not None}
        assert states == {StateType.COMPLETED}, _log(stack, stack.by_name["worker-cpu"])
        with _results_of(orthanc):
            reports = [r.state.result() for r in finished if r.state is not None]
        assert sum(r["counts"]["stored"] for r in reports) == 20
        stored = {r["studies"][0]["study_instance_uid"] for r in reports}
        assert len(stored) == 20
        pacs = OrthancClient.from_settings(orthanc)
        try:
            assert all(pacs.lookup(uid, "Study") is not None for uid in stored)
        finally:
            pacs.close()
        mine = _runs_taken(stack.log_path(stack.by_name["worker-cpu"]).read_text(), finished)
        theirs = _runs_taken(second_log.read_text(), finished)
        print(
            f"\n20 runs in {elapsed:.0f} s: stack worker {len(mine)}, second worker {len(theirs)}"
        )
        assert mine | theirs == ids and not mine & theirs
        assert mine and theirs, "one worker took the whole burst"
    finally:
        stack.down(["worker-cpu"])
        _stop_worker(second)
    assert second.returncode is not None and group_reaped(second.pid), "the worker outlived stop"


def test_ingest_on_a_worker_hands_an_mr_study_to_the_gpu_pool(
    prefect_server: str, orthanc: Settings, patient_sources: Settings, tmp_path: Path
) -> None:
    """The demo's path: the cpu worker ingests, then triggers `run_inference/one-study`, which
    the gpu worker runs as a linked run; its result comes back into the ingest report."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from deployments.work_pools import register_deployments
    from neuronova.sample_mr import write_sample_mr_study

    register_deployments(orthanc)
    write_sample_mr_study(tmp_path / "mr", seed=4242)  # a study no other test reads
    stack = LocalStack(orthanc)
    try:
        stack.up(["worker-cpu", "worker-gpu"])
        run = run_deployment(
            "ingest_study/on-demand", parameters={"path": str(tmp_path / "mr")}, timeout=420
        )
        assert run.state is not None and run.state.is_completed(), _log(
            stack, stack.by_name["worker-cpu"]
        ) + _log(stack, stack.by_name["worker-gpu"])
        with _results_of(orthanc):
            report = run.state.result()
        (reading,) = report["inference"]
        assert reading["status"] == "completed", reading
        assert reading["fhir"]["report"], reading
        assert reading["lesion_count"] >= 1 and reading["seg"]["series_instance_uid"]
        with get_client(sync_client=True) as client:
            inference = client.read_flow_run(_child_run_id(client, run.id, "run_inference"))
        assert inference.work_pool_name == "gpu"
        assert inference.parent_task_run_id is not None  # linked under the ingest run in the UI
        # The gpu worker's log: JSON lines tying the run to its study (common.logs).
        log = stack.log_path(stack.by_name["worker-gpu"]).read_text().splitlines()
        lines = [json.loads(x) for x in log if x.startswith('{"ts"')]
        segmented = [x for x in lines if x["message"].startswith("segmented on ")]
        assert segmented, log[-20:]
        assert segmented[-1]["flow_run_id"] == str(inference.id)
        assert segmented[-1]["study_uid"] == reading["study_instance_uid"]
    finally:
        stack.down(["worker-cpu", "worker-gpu"])


def _child_run_id(client: Any, parent: UUID, flow_name: str) -> UUID:
    """The flow run of `flow_name` started from inside the flow run `parent`."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
        ),
    )
    assert len(runs) == 1, f"expected one {flow_name} run under {parent}, found {len(runs)}"
    run_id: UUID = runs[0].id
    return run_id


def _wait_online(pool: str, names: set[str], log: Path, timeout_s: float = 120) -> None:
    """Until the Prefect server lists these workers ONLINE in the pool."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            online = {
                w.name
                for w in client.read_workers_for_work_pool(pool)
                if w.status is not None and w.status.value == "ONLINE"
            }
            if names <= online:
                return
            assert time.monotonic() < deadline, f"{names - online} not online:\n{log.read_text()}"
            time.sleep(1)


def _runs_taken(log: str, runs: list[FlowRun]) -> set[UUID]:
    """The flow runs a worker's log says it started. ("submitting" is not enough: two workers
    may both try a run, and the server lets only one move it to Pending.)"""
    return {r.id for r in runs if f"Flow run '{r.name}' submitted to infrastructure" in log}


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """As `neuronova stack down` does: SIGINT to `prefect worker start` alone (it forwards it
    to its worker), a second one (it then kills its worker: the graceful stop sometimes never
    ends), then SIGKILL to the group."""
    for _ in range(2):
        os.kill(worker.pid, signal.SIGINT)
        try:
            worker.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


@contextlib.contextmanager
def _results_of(settings: Settings) -> Iterator[None]:
    """Read flow reports from where the stack's workers persist them."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: prefect_results_dir(settings)}):
        yield


def _log(stack: LocalStack, component: Component) -> str:
    return stack.log_path(component).read_text()[-3000:]
