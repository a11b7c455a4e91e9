"""The alerts pool: the same app as the webapp, in its own gunicorn.

Each open alert stream holds a thread for as long as the browser listens, and those threads
must never be the ones the gate needs.
"""

from __future__ import annotations

from neuronova.stack.component import Context, LoopbackHttp
from neuronova.stack.webapp import gunicorn_command

SERVICE = LoopbackHttp("alerts", health_path="/api/health")


def command(ctx: Context) -> list[str]:
    return gunicorn_command(ctx.settings.alerts_port, 1, ctx.settings.alerts_threads)
