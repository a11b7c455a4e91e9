"""Settings that would weaken the signing keys are refused; the generated secret is kept."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

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


def test_production_signs_nothing_without_a_jwt_secret_and_workers_need_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NEURONOVA_DATABASE_URL", "NEURONOVA_JWT_SECRET", "NEURONOVA_ORTHANC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # a test stack's, maybe
    # A worker's settings (no secret: it signs nothing) are valid…
    worker = Settings(
        environment="production",
        data_dir=tmp_path,
        database_url="sqlite:///x.db",
        orthanc_password=SecretStr("o" * 24),
    )
    # …and the webapp, which calls this at start, refuses to run without one.
    with pytest.raises(ValueError, match="NEURONOVA_JWT_SECRET must be set"):
        worker.jwt_secret_bytes()
    with pytest.raises(ValidationError, match="NEURONOVA_DATABASE_URL must be set"):
        Settings(environment="production", data_dir=tmp_path)
    with pytest.raises(ValidationError, match="NEURONOVA_ORTHANC_PASSWORD must be set"):
        Settings(environment="production", data_dir=tmp_path, database_url="sqlite:///x.db")
    assert worker.orthanc_credentials() == ("neuronova", "o" * 24)


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
