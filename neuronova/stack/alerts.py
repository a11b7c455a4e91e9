"""The alerts pool: the same app as the webapp, in its own gunicorn.

Each open alert stream holds a thread for as long as the browser listens, and those threads
must never be the ones the gate needs.
"""

from __future__ import annotations

import httpx

from common.settings import Settings
from neuronova.stack.component import Component, Context, Health, http_health
from neuronova.stack.webapp import gunicorn_command, webapp_env


def _alerts_url(settings: Settings) -> str:
    return settings.alerts_url.rstrip("/")


def _alerts_command(ctx: Context) -> list[str]:
    return gunicorn_command(ctx.settings.alerts_port, 1, ctx.settings.alerts_threads)


def _alerts_health(ctx: Context, client: httpx.Client) -> Health:
    return http_health(client, f"{_alerts_url(ctx.settings)}/api/health")


ALERTS = Component(
    name="alerts",
    key="alerts",
    url=_alerts_url,
    command=_alerts_command,
    health=_alerts_health,
    ports=lambda s: [("127.0.0.1", s.alerts_port)],
    env=webapp_env,
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_ALERTS_URL",
)
