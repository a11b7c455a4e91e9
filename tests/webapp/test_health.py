"""/api/health, what compose's and the stack's health checks ask: the webapp answers, reaches
its database and reaches Orthanc; without Orthanc nothing opens, so it is not healthy."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from common.settings import Settings
from neuronova.stack.ports import free_ports
from webapp import _OrthancProbe, create_app


def _settings(tmp_path: Path, orthanc: Settings | None) -> Settings:
    base: dict[str, object] = {}
    if orthanc is not None:
        credentials = orthanc.orthanc_credentials()
        assert credentials is not None
        # Its password explicitly: the stack's is generated under its own data folder.
        base = {"orthanc_url": orthanc.orthanc_url, "orthanc_password": SecretStr(credentials[1])}
    return Settings(
        **{
            **base,
            "environment": "test",
            "data_dir": tmp_path,
            "database_url": f"sqlite:///{tmp_path / 'nn.db'}",
            "jwt_secret": SecretStr("t" * 48),
            **({} if orthanc else {"orthanc_url": f"http://127.0.0.1:{free_ports(1)[0]}"}),
        }
    )


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webapp._ORTHANC_PROBE", _OrthancProbe())


def test_unhealthy_while_orthanc_does_not_answer(tmp_path: Path) -> None:
    client = create_app(_settings(tmp_path, None)).test_client()
    answer = client.get("/api/health")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "degraded"
    assert "not reachable" in body["orthanc"]


@pytest.mark.usefixtures("orthanc")
def test_healthy_when_orthanc_answers_its_service_account(
    tmp_path: Path, stack_settings: Settings
) -> None:
    client = create_app(_settings(tmp_path, stack_settings)).test_client()
    answer = client.get("/api/health")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"status": "ok"}


@pytest.mark.usefixtures("orthanc")
def test_a_wrong_orthanc_password_is_unhealthy_too(
    tmp_path: Path, stack_settings: Settings
) -> None:
    settings = _settings(tmp_path, stack_settings)
    settings.orthanc_password = SecretStr("wrong" * 5)
    client = create_app(settings).test_client()
    answer = client.get("/api/health")
    assert answer.status_code == 503
    assert "answered 401" in answer.get_json()["orthanc"]
