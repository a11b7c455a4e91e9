"""The Prefect server: its own home and SQLite database under the stack folder, UI under
/prefect behind the gateway."""

from __future__ import annotations

import base64
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from common.errors import StackError
from common.settings import Settings
from neuronova.stack.component import Context, Health


def find_prefect_executable() -> Path:
    """The `prefect` script of the environment this Python runs in."""
    candidate = Path(sys.executable).parent / "prefect"
    if not candidate.exists():
        raise StackError(f"{candidate} not found: is prefect installed in this environment?")
    return candidate


def prefect_url(settings: Settings) -> str:
    """The Prefect server's API URL, as clients use it."""
    return settings.prefect_api_url.rstrip("/")


def prefect_env(ctx: Context) -> dict[str, str]:
    """The Prefect server's settings: its own home and SQLite database, no analytics, and no
    stranger served: an auth string on every API call, CORS for the gateway's origin only,
    CSRF protection on."""
    api_url = prefect_url(ctx.settings)
    gateway = urlsplit(ctx.settings.gateway_url)
    return {
        "PREFECT_SERVER_API_AUTH_STRING": ctx.settings.stack_prefect_auth_string(),
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": f"{gateway.scheme}://{gateway.netloc}",
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_HOME": str(ctx.home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{ctx.home / 'prefect.db'}",
        # SQLite takes one writer at a time: under a burst of runs (two workers, the arrival
        # watcher, CSRF tokens) a request waits for the lock rather than failing with a 503
        # after the default 10 s (seen under CI with 20 runs at once).
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30",
        # No network here, and no reason to report usage from a hospital.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(ctx.settings.prefect_port),
        "PREFECT_API_URL": api_url,
        # The UI is for admins, behind the gateway (webapp/admin_ui.py): served under
        # /prefect, its API calls go through the gateway too.
        "PREFECT_UI_SERVE_BASE": "/prefect",
        "PREFECT_UI_API_URL": f"{ctx.settings.gateway_url.rstrip('/')}/prefect/api",
    }


def auth_header(settings: Settings) -> dict[str, str]:
    """What a client of the local Prefect server sends (Prefect's own clients do the same
    from PREFECT_API_AUTH_STRING)."""
    token = base64.b64encode(settings.stack_prefect_auth_string().encode()).decode()
    return {"Authorization": f"Basic {token}"}


def api_headers(settings: Settings, client: httpx.Client) -> dict[str, str]:
    """Headers for a write to the local Prefect server's API: its auth string, and a CSRF
    token for a client id of our own (the server protects every POST, PUT, PATCH, DELETE)."""
    headers = auth_header(settings)
    client_id = uuid.uuid4().hex
    answer = client.get(
        f"{prefect_url(settings)}/csrf-token", params={"client": client_id}, headers=headers
    )
    answer.raise_for_status()
    return headers | {
        "Prefect-Csrf-Token": answer.json()["token"],
        "Prefect-Csrf-Client": client_id,
    }


def credentials(settings: Settings) -> str:
    """The auth string, for `stack status --json` under "credentials"."""
    return settings.stack_prefect_auth_string()


def command(ctx: Context) -> list[str]:
    return [
        str(find_prefect_executable()),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.settings.prefect_port),
    ]


def prepare(ctx: Context) -> None:
    ctx.home.mkdir(parents=True, exist_ok=True)


def health(ctx: Context, client: httpx.Client) -> Health:
    """The API's /health answers true; the version comes from /admin/version."""
    api = prefect_url(ctx.settings)
    try:
        response = client.get(f"{api}/health")
        if response.status_code != 200 or response.json() is not True:
            return Health(False, error=f"GET /health answered HTTP {response.status_code}")
        version = client.get(f"{api}/admin/version", headers=auth_header(ctx.settings))
        return Health(True, version=version.json() if version.status_code == 200 else None)
    except (httpx.HTTPError, ValueError) as err:
        return Health(False, error=f"{type(err).__name__}: {err}")


def ports(settings: Settings) -> list[tuple[str, int]]:
    return [("127.0.0.1", settings.prefect_port)]
