"""The task runner a flow fans its tasks out with, chosen by `Settings.task_runner`.

`threads` (the default) runs tasks in the flow run's own process: right for one study, and for
most runs, whose tasks wait on Orthanc and the database rather than on the CPU.

`dask` is for fan-out that outgrows one process: an archive-wide check across many studies
(each transcode holds a CPU core), or several machines sharing the work through an existing
scheduler (`NEURONOVA_DASK_ADDRESS`). Without an address each flow run starts its own local
cluster of worker processes, bound to loopback only, and closes it when the run ends.

With dask, tasks run in other processes (maybe other machines): their arguments (the flow's
`Settings` among them) and results must pickle.

A flow names `ConfiguredTaskRunner()` in its decorator: the choice is read from the settings when
a run starts, never when the flow's module is imported.
"""

from __future__ import annotations

from typing import Any, Self

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from common.settings import Settings

LOOPBACK = "127.0.0.1"


def task_runner(settings: Settings) -> TaskRunner[Any]:
    """A fresh task runner for a flow, as `settings.task_runner` asks."""
    if settings.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.task_runner_workers)
    # Imported here: prefect_dask pulls in dask and distributed (slow), which threads never need.
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(settings))


def local_cluster_kwargs(settings: Settings) -> dict[str, Any]:
    """`distributed.LocalCluster` arguments: worker processes, everything on loopback."""
    dashboard = settings.dask_dashboard_port
    kwargs: dict[str, Any] = {
        # The scheduler, the nannies and the workers all bind here: whoever reaches a Dask
        # scheduler can run any code as this user, so nothing may listen beyond loopback.
        "host": LOOPBACK,
        "scheduler_port": settings.dask_scheduler_port,
        "n_workers": settings.task_runner_workers,
        # One task per process at a time: a task may run a thread pool of its own (check_study
        # does), and across tasks the GIL makes processes, not threads, the unit of parallelism.
        "threads_per_worker": 1,
        "processes": True,
        # The dashboard's pages need bokeh, which is not a dependency: without it this port
        # serves only /health, /metrics and a "bokeh is missing" page.
        "dashboard_address": f"{LOOPBACK}:{dashboard}" if dashboard is not None else None,
        "worker_dashboard_address": None,
    }
    if dashboard is None:
        # Without a dashboard the scheduler still serves /health and /metrics, on port 8787 by
        # default: any free loopback port instead, so concurrent runs do not fight over 8787.
        kwargs["scheduler_kwargs"] = {"dashboard_address": f"{LOOPBACK}:0"}
    return kwargs


class ConfiguredTaskRunner(ThreadPoolTaskRunner[Any]):
    """The task runner that `Settings.task_runner` names, chosen at the start of each flow run.

    Prefect calls `duplicate()` on a flow's task runner once per run and uses the copy; this one
    answers with the configured runner. Used without a run (never in practice), it is threads.
    """

    def duplicate(self) -> Self:
        # The flow run is an entry point: its settings come from its environment, read now.
        return task_runner(Settings())  # type: ignore[return-value]  # any TaskRunner will do
