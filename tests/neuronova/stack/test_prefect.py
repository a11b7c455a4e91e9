"""The Prefect server: its settings, then the real server of the whole stack."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from common.settings import Settings
from neuronova.stack.component import Context
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.prefect import api_headers, auth_header, prefect_env
from neuronova.stack.supervisor import LocalStack


def test_prefect_env_keeps_everything_under_the_stack(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path)
    home = settings.stack_dir / "prefect"
    env = prefect_env(Context(settings=settings, home=home))

    assert env["PREFECT_HOME"] == str(home)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{home}/prefect.db"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_API_URL"] == settings.prefect_api_url
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == settings.stack_prefect_auth_string()
    assert env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == _origin(settings)


@pytest.mark.integration
def test_prefect_answers_health(full_stack: LocalStack) -> None:
    response = httpx.get(f"{full_stack.settings.prefect_api_url}/health", timeout=5)
    assert response.json() is True
    assert full_stack.root.joinpath("prefect", "prefect.db").exists()


@pytest.mark.integration
def test_prefect_serves_no_stranger(full_stack: LocalStack) -> None:
    """Loopback is no trust boundary: a page in a browser on this machine may reach the API,
    but has neither the auth string nor the gateway's origin, and writes need a CSRF token."""
    settings = full_stack.settings
    api = settings.prefect_api_url
    auth = auth_header(settings)
    assert full_stack.status()["credentials"]["prefect"] == settings.stack_prefect_auth_string()

    wrong = {"Authorization": "Basic " + base64.b64encode(b"guess").decode()}
    for path in ("/admin/version", "/csrf-token?client=stranger"):  # no CSRF token either
        assert httpx.get(f"{api}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{api}{path}", headers=wrong, timeout=10).status_code == 401, path
    assert httpx.get(f"{api}/admin/version", headers=auth, timeout=10).status_code == 200
    # The right string, but a write without its CSRF token: refused; with one: answered.
    assert httpx.post(f"{api}/deployments/filter", json={}, headers=auth).status_code == 403
    with httpx.Client(timeout=10) as client:
        answered = client.post(
            f"{api}/deployments/filter", json={}, headers=api_headers(settings, client)
        )
    assert answered.status_code == 200

    # CORS: the gateway's origin only (a page elsewhere cannot read an answer).
    for origin, allowed in (("https://attacker.example", False), (_origin(settings), True)):
        preflight = httpx.options(
            f"{api}/deployments/filter",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        granted = preflight.headers.get("access-control-allow-origin")
        assert (granted == origin) is allowed, (origin, granted)
        assert granted != "*"


def _origin(settings: Settings) -> str:
    url = urlsplit(settings.gateway_url)
    return f"{url.scheme}://{url.netloc}"
