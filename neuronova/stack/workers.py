"""The Prefect workers: one process worker per work pool, as in production (compose services
worker-cpu and worker-gpu).

`cpu` runs ingest, checks and patient syncs; `gpu` runs inference, one at a time per GPU (the
pool's limit), on the CPU where there is none. They load the flows from this checkout (the
deployments' pull step), so `make deploy` must have registered them; the demo does. Each answers
/health on loopback (Prefect's worker webserver).
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import httpx

from common.settings import PROJECT_ROOT, Settings
from neuronova.prefect_env import prefect_results_dir
from neuronova.stack.component import Component, Context, Health, http_health, settings_env
from neuronova.stack.prefect import api_headers, find_prefect_executable, prefect_url

WORKER_POOLS: tuple[str, ...] = ("cpu", "gpu")
# JSON lines with flow_run_id / study_uid, for the worker and every run it starts.
WORKER_LOGGING_CONFIG = PROJECT_ROOT / "deployments" / "logging.yml"


def worker_name(pool: str) -> str:
    """The name the pool's worker registers under (several stacks have several servers)."""
    return f"neuronova-{pool}@{socket.gethostname()}"


def worker_health_port(settings: Settings, pool: str) -> int:
    return settings.worker_health_port + WORKER_POOLS.index(pool)


def _worker_health_url(settings: Settings, pool: str) -> str:
    return f"http://127.0.0.1:{worker_health_port(settings, pool)}/health"


def _worker_command(pool: str) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        return [
            str(find_prefect_executable()),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",  # deployments.work_pools.POOL_TYPE (not imported: it pulls in Prefect)
            "--name",
            worker_name(pool),
            "--with-healthcheck",
            "--limit",
            str(ctx.settings.worker_limit),
        ]

    return command


WORKER_CLIENT_MAX_RETRIES = "8"


def _worker_env(pool: str) -> Callable[[Context], dict[str, str]]:
    def env(ctx: Context) -> dict[str, str]:
        s = ctx.settings
        logging_config = (
            {"PREFECT_LOGGING_SETTINGS_PATH": str(WORKER_LOGGING_CONFIG)}
            if s.log_format == "json"
            else {}
        )
        return (
            settings_env(s)
            | logging_config
            | {
                "PREFECT_HOME": str(ctx.home),
                "PREFECT_API_URL": prefect_url(s),
                "PREFECT_API_AUTH_STRING": s.stack_prefect_auth_string(),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # Poll every 2 s: a triggered run starts sooner, for one cheap request.
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                # The local Prefect server keeps its state in SQLite, one writer at a time:
                # under a burst it answers 503 (retryable) for a while. Prefect's default of 5
                # retries (62 s of backoff) once ran out while submitting a run, which the
                # worker then reported Crashed; 8 retries wait up to ~8 minutes.
                "PREFECT_CLIENT_MAX_RETRIES": WORKER_CLIENT_MAX_RETRIES,
                "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
                "PREFECT_WORKER_WEBSERVER_PORT": str(worker_health_port(s, pool)),
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_results_dir(s)),
                # Heartbeats: a run whose process dies is marked Crashed, then started again
                # (deployments/crashed_runs.py).
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(s.flow_heartbeat_s),
                # Runs on these workers hand studies on through the deployments, so inference
                # lands on the gpu pool.
                "NEURONOVA_HANDOFF": "deployment",
            }
        )

    return env


def _prepare_worker(ctx: Context) -> None:
    """Where the worker's runs keep their results. (The pools and the deployments on them are
    registered by `stack up` before any worker starts: `ensure_deployments`.)"""
    prefect_results_dir(ctx.settings).mkdir(parents=True, exist_ok=True)


def ensure_deployments(settings: Settings) -> None:
    """The work pools with their limits (a worker's own `--type` would create one without the
    gpu pool's limit), every deployment on them and the crashed-runs automation, on the stack's
    Prefect server, as `neuronova deploy` registers them (updated in place when they exist)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from deployments.work_pools import register_deployments

    api = {
        PREFECT_API_URL: prefect_url(settings),
        PREFECT_API_AUTH_STRING: settings.stack_prefect_auth_string(),
    }
    with temporary_settings(api):
        register_deployments(settings)


def _worker_health(pool: str) -> Callable[[Context, httpx.Client], Health]:
    """The worker's /health answers OK and the Prefect server lists it as ONLINE in its pool."""

    def health(ctx: Context, client: httpx.Client) -> Health:
        own = http_health(client, _worker_health_url(ctx.settings, pool))
        if not own.ok:
            return own
        try:
            headers = api_headers(ctx.settings, client)
            response = client.post(
                f"{prefect_url(ctx.settings)}/work_pools/{pool}/workers/filter", headers=headers
            )
            workers = {w["name"]: w for w in response.json()} if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as err:
            return Health(False, error=f"Prefect server: {type(err).__name__}: {err}")
        mine = workers.get(worker_name(pool))
        if mine is None or mine.get("status") != "ONLINE":
            return Health(False, error=f"not ONLINE in work pool {pool} yet")
        return Health(True, degraded=_idle_pool(ctx, client, headers, pool))

    return health


def _idle_pool(
    ctx: Context, client: httpx.Client, headers: dict[str, str], pool: str
) -> str | None:
    """Why the worker can do nothing (no deployment on its pool), or None."""
    try:
        response = client.post(
            f"{prefect_url(ctx.settings)}/deployments/count",
            headers=headers,
            json={"work_pools": {"name": {"any_": [pool]}}},
        )
        count = int(response.json()) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        count = None
    if count == 0:
        return f"no deployment on work pool {pool}: run `neuronova deploy`"
    return None


def worker(pool: str) -> Component:
    """The worker of one work pool."""
    return Component(
        name=f"worker-{pool}",
        key=f"worker_{pool}",
        url=lambda s: _worker_health_url(s, pool),
        command=_worker_command(pool),
        health=_worker_health(pool),
        ports=lambda s: [("127.0.0.1", worker_health_port(s, pool))],
        prepare=_prepare_worker,
        env=_worker_env(pool),
        needs_deployments=True,
        # `prefect worker start` forwards a SIGINT to its worker ("finish up and stop") and
        # turns a second one into SIGKILL of it. The graceful stop sometimes never ends
        # (seen under CI), hence the second SIGINT, then SIGTERM, then SIGKILL.
        stop_signals=(signal.SIGINT, signal.SIGINT, signal.SIGTERM),
        signal_leader=True,
        stop_timeout_s=45.0,
        start_timeout_s=90.0,
        port_hint="choose other ports with NEURONOVA_WORKER_HEALTH_PORT",
    )


WORKERS: tuple[Component, ...] = tuple(worker(pool) for pool in WORKER_POOLS)
