"""Settings that would weaken the signing keys are refused; the generated secret is kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import make_url

from common.settings import Settings


@pytest.mark.parametrize("environment", ["demo", "test", "production"])
def test_a_short_jwt_secret_is_refused_everywhere(environment: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(
            environment=environment,  # type: ignore[arg-type]
            data_dir=tmp_path,
            database_url="sqlite:///x.db",
            jwt_secret=SecretStr(""),
        )


PRODUCTION = {
    "environment": "production",
    "database_url": "mysql+pymysql://neuronova@mysql:3306/neuronova",
    "redis_url": "redis://redis:6379/0",
    "orthanc_password": SecretStr("o" * 24),
    "emr_client_id": "hospital-client",
    "emr_client_secret": SecretStr("c" * 24),
    "emr_password": SecretStr("e" * 24),
}


@pytest.fixture
def no_stack_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("NEURONOVA_"):
            monkeypatch.delenv(name)  # a test stack's, maybe


@pytest.mark.usefixtures("no_stack_settings")
def test_production_signs_nothing_without_a_jwt_secret_and_workers_need_none(
    tmp_path: Path,
) -> None:
    # A worker's settings (no secret: it signs nothing) are valid…
    worker = Settings(data_dir=tmp_path, **PRODUCTION)
    # …and the webapp, which calls this at start, refuses to run without one.
    with pytest.raises(ValueError, match="NEURONOVA_JWT_SECRET must be set"):
        worker.jwt_secret_bytes()
    assert worker.orthanc_credentials() == ("neuronova", "o" * 24)


@pytest.mark.usefixtures("no_stack_settings")
@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"database_url": None}, "NEURONOVA_DATABASE_URL must be set"),
        ({"database_url": "sqlite:///x.db"}, "SQLite, which production refuses"),
        ({"redis_url": None}, "NEURONOVA_REDIS_URL must be set"),
        ({"redis_url": ""}, "NEURONOVA_REDIS_URL must be set"),
        ({"emr_client_id": "neuronova-demo-client"}, "the EMR emulator's demo client"),
        ({"emr_client_secret": None}, "NEURONOVA_EMR_CLIENT_SECRET and NEURONOVA_EMR_PASSWORD"),
        ({"emr_password": None}, "NEURONOVA_EMR_CLIENT_SECRET and NEURONOVA_EMR_PASSWORD"),
        ({"orthanc_password": None}, "NEURONOVA_ORTHANC_PASSWORD must be set"),
    ],
)
def test_production_refuses_what_the_demo_stands_in_with(
    tmp_path: Path, change: dict[str, object], refusal: str
) -> None:
    with pytest.raises(ValidationError, match=refusal):
        Settings(data_dir=tmp_path, **(PRODUCTION | change))


@pytest.mark.usefixtures("no_stack_settings")
def test_passwords_are_set_into_their_urls_whatever_characters_they_hold(tmp_path: Path) -> None:
    password = "a/b@c%d:e#f?"
    settings = Settings(
        data_dir=tmp_path,
        **PRODUCTION,
        database_password=SecretStr(password),
        redis_password=SecretStr(password),
    )
    database = make_url(settings.resolved_database_url)
    assert (database.username, database.password, database.host) == ("neuronova", password, "mysql")
    assert database.database == "neuronova"
    redis_url = settings.resolved_redis_url
    assert redis_url is not None
    parsed = redis.connection.parse_url(redis_url)
    assert (parsed["password"], parsed["host"], parsed["port"], parsed["db"]) == (
        password,
        "redis",
        6379,
        0,
    )


def test_the_demo_secret_is_generated_once_private_and_shared(tmp_path: Path) -> None:
    settings = Settings(environment="demo", data_dir=tmp_path)
    first = settings.jwt_secret_bytes()
    assert len(first) >= 32
    assert Settings(environment="demo", data_dir=tmp_path).jwt_secret_bytes() == first
    path = tmp_path / "secrets" / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".jwt_secret.*"))  # no temporary file left behind


def test_a_truncated_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "jwt_secret"
    path.parent.mkdir()
    path.write_text("short\n")
    with pytest.raises(ValueError, match="shorter than 32"):
        Settings(environment="demo", data_dir=tmp_path).jwt_secret_bytes()
