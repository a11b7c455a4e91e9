"""`neuronova stack`: status as JSON with nothing running and with the whole stack up, and an
unknown component refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuronova.stack.component import settings_env
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from neuronova.stack_cli import app


def test_cli_status_json_when_nothing_runs(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path)
    result = CliRunner().invoke(app, ["status", "--json"], env=settings_env(settings))

    assert result.exit_code == 1
    status = json.loads(result.stdout)
    assert status["up"] is False
    assert status["orthanc"] == settings.orthanc_url
    assert status["prefect"] == settings.prefect_api_url
    assert status["components"]["orthanc"]["running"] is False


def test_cli_reports_unknown_component(tmp_path: Path) -> None:
    env = settings_env(settings_on_free_ports(tmp_path))
    result = CliRunner().invoke(app, ["up", "--only", "orthanc,bogus"], env=env)
    assert result.exit_code == 1
    assert "unknown component" in result.stderr


@pytest.mark.integration
def test_cli_status_json_when_up(full_stack: LocalStack) -> None:
    result = CliRunner().invoke(app, ["status", "--json"], env=settings_env(full_stack.settings))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["up"] is True
