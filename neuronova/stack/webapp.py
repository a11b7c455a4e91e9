"""The webapp (the gate, the API, the pages) in gunicorn, behind nginx."""

from __future__ import annotations

import sys
from pathlib import Path

from common.errors import StackError
from common.settings import PROJECT_ROOT
from neuronova.stack.component import (
    Context,
    LoopbackHttp,
    settings_env,
)

SERVICE = LoopbackHttp("webapp", health_path="/api/health")


def venv_script(name: str) -> Path:
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise StackError(f"{candidate} not found: run `make setup`")
    return candidate


def command(ctx: Context) -> list[str]:
    s = ctx.settings
    return gunicorn_command(s.webapp_port, s.webapp_workers, s.webapp_threads)


def gunicorn_command(port: int, workers: int, threads: int) -> list[str]:
    """gunicorn serving the webapp on a loopback port."""
    return [
        str(venv_script("gunicorn")),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        # Threads keep connections from nginx alive between requests (sync workers cannot).
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--keep-alive",
        "75",
        "--graceful-timeout",
        "10",
        "--chdir",
        str(PROJECT_ROOT),
        "--no-control-socket",
        # nginx accepts header lines up to 16 KB; let the gate answer those (an oversized
        # token is its 401) rather than gunicorn's 431 at 8 KB.
        "--limit-request-field_size",
        "16384",
        "--error-logfile",
        "-",
        "webapp.wsgi:app",
    ]


def webapp_env(ctx: Context) -> dict[str, str]:
    """The webapp's settings, for each of its gunicorn workers."""
    # The signing secret is created once here so that every worker reads the same one.
    ctx.settings.jwt_secret_bytes()
    return settings_env(ctx.settings)
