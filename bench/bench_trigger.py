"""How soon a deployment run triggered from the CLI starts on an idle worker.

The stack's Prefect server and its `cpu` worker (the same code as `neuronova stack up`), the
deployments registered as `make deploy` does; then, one at a time, `prefect deployment run
ingest_study/on-demand` on an empty folder (so the flow itself takes no time), a random pause
before each so that the trigger lands anywhere in the worker's polling cycle. Per run:

    CLI → Running        from starting the CLI command to the run entering Running
    scheduled → Running  from the run's expected start (the server got it) to Running

The target is 15 s CLI → Running. What it takes: the worker's polling, then the run's own
process (Python, Prefect and the flow module imported) before the engine reports Running.
Baselines, the same worker in the same run:

    Prefect default (10 s)    PREFECT_WORKER_QUERY_SECONDS unset (ours polls every 2 s)
    no bytecode (uv default)  site-packages without compiled bytecode, as a plain `uv sync`
                              leaves them, where Python may not write it (PYTHONDONTWRITEBYTECODE,
                              a read-only image): `scripts/setup` and the Dockerfile compile it

    .venv/bin/python bench/bench_trigger.py [--runs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from common.db import migrate
from common.settings import Settings
from neuronova.prefect_env import use_stack_prefect
from neuronova.stack.component import Component, Context
from neuronova.stack.components import PREFECT
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack

DEPLOYMENT = "ingest_study/on-demand"
TARGET_S = 15.0
RUN_ID = re.compile(r"UUID:\s*([0-9a-f-]{36})")


@dataclasses.dataclass
class Timing:
    cli_to_running_s: float
    scheduled_to_running_s: float


def with_default_polling(worker: Component) -> Component:
    """The same worker, but polling as Prefect does out of the box."""
    ours = worker.env

    def env(ctx: Context) -> dict[str, str]:
        return {k: v for k, v in ours(ctx).items() if k != "PREFECT_WORKER_QUERY_SECONDS"}

    return dataclasses.replace(worker, env=env)


def without_bytecode(worker: Component, empty_cache: Path) -> Component:
    """The same worker, as after a plain `uv sync` (no `--compile-bytecode`) on a machine where
    Python writes no bytecode: each run's process compiles every module it imports again."""
    ours = worker.env

    def env(ctx: Context) -> dict[str, str]:
        return ours(ctx) | {
            "PYTHONPYCACHEPREFIX": str(empty_cache),  # look for bytecode only where none is
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    return dataclasses.replace(worker, env=env)


def trigger_from_cli(settings: Settings, inbox: Path) -> tuple[float, str]:
    """`prefect deployment run`, as an operator types it; (wall clock at start, run id)."""
    started = time.time()
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),  # this environment's CLI
            "deployment",
            "run",
            DEPLOYMENT,
            "--param",
            f"path={inbox}",
        ],
        env=os.environ
        | {
            "PREFECT_API_URL": settings.prefect_api_url,
            "PREFECT_API_AUTH_STRING": settings.stack_prefect_auth_string(),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = RUN_ID.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"prefect deployment run failed ({done.returncode}):\n{done.stdout}")
    return started, found.group(1)


def wait_for_completion(run_id: str, timeout_s: float = 180.0) -> tuple[datetime, datetime]:
    """(expected start, start) of the run once it completed."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(UUID(run_id))
            if run.state is not None and run.state.is_final():
                if not run.state.is_completed():
                    raise SystemExit(f"run {run_id} ended {run.state.type}: {run.state.message}")
                assert run.start_time is not None and run.expected_start_time is not None
                return run.expected_start_time, run.start_time
            time.sleep(0.5)
    raise SystemExit(f"run {run_id} did not complete within {timeout_s:.0f} s")


def measure(settings: Settings, worker: Component, runs: int, inbox: Path) -> list[Timing]:
    stack = LocalStack(settings, components=(PREFECT, worker))
    stack.up([worker.name])
    try:
        timings = []
        for _ in range(runs):
            time.sleep(random.uniform(0.0, 10.0))  # anywhere in either polling cycle
            started, run_id = trigger_from_cli(settings, inbox)
            expected, running = wait_for_completion(run_id)
            timings.append(
                Timing(
                    cli_to_running_s=running.timestamp() - started,
                    scheduled_to_running_s=(running - expected).total_seconds(),
                )
            )
        return timings
    finally:
        stack.down([worker.name])


def summary(label: str, timings: list[Timing]) -> float:
    cli = [t.cli_to_running_s for t in timings]
    sched = [t.scheduled_to_running_s for t in timings]
    print(
        f"{label:<28} CLI → Running p50 {statistics.median(cli):5.1f} s  max {max(cli):5.1f} s"
        f"   scheduled → Running p50 {statistics.median(sched):5.1f} s  max {max(sched):5.1f} s"
    )
    return statistics.median(cli)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="triggered runs per configuration")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trigger-") as tmp:
        settings = settings_on_free_ports(Path(tmp))
        migrate(settings.resolved_database_url)
        use_stack_prefect(settings)  # before Prefect is imported
        from deployments.work_pools import register_deployments

        inbox = Path(tmp) / "empty-inbox"
        inbox.mkdir()
        stack = LocalStack(settings)
        stack.up(["prefect"])
        try:
            register_deployments(settings)
            ours_worker = stack.by_name["worker-cpu"]
            configurations: list[tuple[str, Component]] = [
                ("ours (poll every 2 s)", ours_worker),
                ("Prefect default (10 s)", with_default_polling(ours_worker)),
                ("no bytecode (uv default)", without_bytecode(ours_worker, Path(tmp) / "none")),
            ]
            results: dict[str, list[Timing]] = {}
            for label, worker in configurations:
                results[label] = measure(settings, worker, args.runs, inbox)
        finally:
            stack.down(["prefect"])
    print(
        f"\n{args.runs} runs each, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores"
    )
    medians: list[float] = [summary(label, timings) for label, timings in results.items()]
    worst = max(t.cli_to_running_s for t in results[configurations[0][0]])
    verdict = "met by every run" if worst <= TARGET_S else f"missed (slowest run {worst:.1f} s)"
    print(f"ours / Prefect default polling, p50 CLI → Running: {medians[0] / medians[1]:.2f}")
    print(f"ours / no compiled bytecode, p50 CLI → Running: {medians[0] / medians[2]:.2f}")
    print(f"target {TARGET_S:.0f} s CLI → Running: {verdict}")


if __name__ == "__main__":
    main()
