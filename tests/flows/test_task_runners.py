"""`task_runner(settings)`: threads by default, Dask on loopback or an existing scheduler; and the
HTJ2K check run over a real local Dask cluster against the test Orthanc."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.settings import Settings
from flows.check_htj2k import check_htj2k
from neuronova.stack.ports import free_ports
from tasks.dicom.htj2k import HTJ2K_LOSSLESS
from tasks.runners import ConfiguredTaskRunner, task_runner
from tests.support.dicom_factory import dicom_bytes, make_ct
from tests.support.orthanc import orthanc_http

LOOPBACK = "127.0.0.1"


def test_threads_runner_has_the_configured_workers() -> None:
    runner = task_runner(Settings(task_runner="threads", task_runner_workers=3))

    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 3


def test_a_flow_s_runner_is_chosen_when_its_run_starts_not_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_dask import DaskTaskRunner

    configured = ConfiguredTaskRunner()
    monkeypatch.setenv("NEURONOVA_TASK_RUNNER", "dask")
    monkeypatch.setenv("NEURONOVA_DASK_ADDRESS", "tcp://10.1.2.3:8786")
    assert isinstance(configured.duplicate(), DaskTaskRunner)
    monkeypatch.setenv("NEURONOVA_TASK_RUNNER", "threads")
    monkeypatch.setenv("NEURONOVA_TASK_RUNNER_WORKERS", "3")
    threads = configured.duplicate()
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3


@pytest.mark.parametrize(
    ("dashboard_port", "dashboard"),
    [
        # The scheduler's /health and /metrics then take any free loopback port, not 8787.
        (
            None,
            {"dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}},
        ),
        (8799, {"dashboard_address": f"{LOOPBACK}:8799"}),
    ],
    ids=["no-dashboard", "dashboard-on-loopback"],
)
def test_dask_runner_builds_a_loopback_cluster(
    dashboard_port: int | None, dashboard: dict[str, Any]
) -> None:
    settings = Settings(
        task_runner="dask",
        task_runner_workers=3,
        dask_scheduler_port=8786,
        dask_dashboard_port=dashboard_port,
    )

    runner = task_runner(settings)

    assert isinstance(runner, DaskTaskRunner)
    assert runner.address is None
    assert runner.cluster_kwargs == {
        "host": LOOPBACK,
        "scheduler_port": 8786,
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "worker_dashboard_address": None,
        **dashboard,
    }


def test_dask_runner_uses_an_existing_scheduler() -> None:
    runner = task_runner(Settings(task_runner="dask", dask_address="tcp://10.1.2.3:8786"))

    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.1.2.3:8786"
    assert runner.cluster_kwargs == {}  # no local cluster is started


class Listeners:
    """The TCP sockets this process and its descendants listen on, sampled while a block runs.

    A flow run duplicates its task runner and closes the cluster when it ends, so the test can
    only see the cluster from outside: by the sockets and processes it had while it ran.
    """

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.processes: set[int] = set()

    @staticmethod
    def now() -> tuple[set[tuple[str, int]], set[int]]:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        sockets: set[tuple[str, int]] = set()
        for proc in procs:
            try:
                connections = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue  # a worker that ended between listing and looking
            sockets |= {
                (c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN
            }
        return sockets, {p.pid for p in procs}

    @contextmanager
    def watch(self, every_s: float = 0.1) -> Iterator[None]:
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                sockets, pids = self.now()
                self.seen |= sockets
                self.processes |= pids
                done.wait(every_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()


def store_studies(settings: Settings, studies: int, per_study: int) -> list[Dataset]:
    """Uncompressed CT studies POSTed straight to Orthanc, as a tool outside ingest would."""
    datasets = []
    for _ in range(studies):
        study, series = generate_uid(), generate_uid()
        for i in range(per_study):
            ds = make_ct(i, study=study, series=series)
            orthanc_http(settings).post("/instances", content=dicom_bytes(ds)).raise_for_status()
            datasets.append(ds)
    return datasets


def outcomes(report: dict[str, Any], datasets: list[Dataset]) -> list[tuple[str, str, str]]:
    """What the check did to each of `datasets`: status, transfer syntax before and after."""
    by_sop = {i["sop_instance_uid"]: i for i in report["instances"]}
    return [
        (
            by_sop[ds.SOPInstanceUID]["status"],
            by_sop[ds.SOPInstanceUID]["transfer_syntax_before"],
            by_sop[ds.SOPInstanceUID]["transfer_syntax_after"],
        )
        for ds in datasets
    ]


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_harness")
def test_archive_check_over_local_dask_matches_threads(orthanc: Settings) -> None:
    (scheduler_port,) = free_ports(1)
    threads = orthanc.model_copy(update={"task_runner": "threads", "task_runner_workers": 2})
    dask = orthanc.model_copy(
        update={
            "task_runner": "dask",
            "task_runner_workers": 2,
            "dask_scheduler_port": scheduler_port,
        }
    )
    # Archive-wide, as the nightly check runs; the threads run also settles whatever earlier
    # tests left in the session's Orthanc, so the Dask run's only new work is its own studies.
    by_threads = store_studies(orthanc, studies=2, per_study=2)
    threads_report = check_htj2k.with_options(task_runner=task_runner(threads))()
    by_dask = store_studies(orthanc, studies=2, per_study=2)
    before, known_pids = Listeners.now()
    listeners = Listeners()

    with listeners.watch():
        dask_report = check_htj2k.with_options(task_runner=task_runner(dask))()

    expected = [("replaced", ExplicitVRLittleEndian, HTJ2K_LOSSLESS)] * 4
    assert outcomes(threads_report, by_threads) == expected
    assert outcomes(dask_report, by_dask) == expected
    assert outcomes(dask_report, by_threads) == [("ok", HTJ2K_LOSSLESS, HTJ2K_LOSSLESS)] * 4
    assert dask_report["counts"].get("replaced") == 4
    assert "failed" not in dask_report["counts"]
    # Every instance the threads run saw, the Dask run saw too: each study reached a worker.
    threads_ids = {i["orthanc_id"] for i in threads_report["instances"]}
    assert threads_ids <= {i["orthanc_id"] for i in dask_report["instances"]}
    # The cluster listened on the fixed port, and on nothing but loopback.
    opened = listeners.seen - before
    assert (LOOPBACK, scheduler_port) in opened
    assert {ip for ip, _ in opened} == {LOOPBACK}
    assert len(listeners.processes - known_pids) >= dask.task_runner_workers
    # ... and the run closed it.
    after, _ = Listeners.now()
    assert (LOOPBACK, scheduler_port) not in after
