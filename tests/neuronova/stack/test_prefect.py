"""The Prefect server: its settings, then the real server of the whole stack."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from neuronova.stack.component import Context
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.prefect import prefect_env
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


@pytest.mark.integration
def test_prefect_answers_health(full_stack: LocalStack) -> None:
    response = httpx.get(f"{full_stack.settings.prefect_api_url}/health", timeout=5)
    assert response.json() is True
    assert full_stack.root.joinpath("prefect", "prefect.db").exists()
