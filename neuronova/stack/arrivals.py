"""The arrival watcher (`neuronova watch-arrivals`): Orthanc's stable studies become
`process_arrival` runs on the cpu pool (neuronova/arrivals_watcher.py). It listens on no port;
it is healthy while its heartbeat file is fresh (touched after every pass)."""

from __future__ import annotations

import httpx

from neuronova.heartbeat import heartbeat_limit_s, read_heartbeat
from neuronova.prefect_env import prefect_results_dir
from neuronova.stack.component import Context, Health, settings_env
from neuronova.stack.prefect import prefect_url
from neuronova.stack.webapp import venv_script

HEARTBEAT = "heartbeat"


def command(ctx: Context) -> list[str]:
    return [
        str(venv_script("neuronova")),
        "watch-arrivals",
        "--heartbeat",
        str(ctx.home / HEARTBEAT),
    ]


def env(ctx: Context) -> dict[str, str]:
    s = ctx.settings
    return settings_env(s) | {
        "PREFECT_API_URL": prefect_url(s),
        "PREFECT_API_AUTH_STRING": s.stack_prefect_auth_string(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_results_dir(s)),
    }


def health(ctx: Context, _client: httpx.Client) -> Health:
    """A pass finished recently (a pass that fails still beats), and degraded with the reason
    while the watcher cannot do its job: no deployment to start, Prefect or Orthanc not
    answering (the studies wait in the database meanwhile; nothing is lost)."""
    state = read_heartbeat(ctx.home / HEARTBEAT, heartbeat_limit_s(ctx.settings.arrivals_poll_s))
    if not state.alive:
        return Health(False, error=state.problem)
    return Health(True, degraded=state.problem)
