"""NeuroNova settings: one pydantic-settings class, built once at an entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of the platform, read from `NEURONOVA_*` variables (or a `.env` file)."""

    model_config = SettingsConfigDict(
        env_prefix="NEURONOVA_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["demo", "test", "production"] = "demo"
    data_dir: Path = Field(
        default=PROJECT_ROOT / "var",
        description="Project-owned folder: stack configs and data, quarantine, backups.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. mysql+pymysql://user:pw@host/db; "
        "SQLite under data_dir when unset (the embedded default).",
    )

    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_dicom_port: int = 4242
    orthanc_aet: str = "NEURONOVA"
    orthanc_username: str | None = None
    orthanc_password: SecretStr | None = None
    orthanc_timeout_s: float = Field(default=30.0, gt=0)
    orthanc_retry_delays_s: list[float] = Field(
        default=[2.0, 10.0, 30.0],
        description="Waits before each Prefect retry of a failed Orthanc batch (jittered).",
    )

    prefect_api_url: str = "http://127.0.0.1:4200/api"
    htj2k_check_cron: str = Field(
        default="30 2 * * *", description="When the archive-wide HTJ2K check runs (cron, UTC)."
    )

    ingest_workers: int = Field(default=4, ge=1, le=64, description="Concurrent Orthanc uploads.")
    ingest_batch_size: int = Field(
        default=64, ge=1, description="Instances per Prefect task run (keeps overhead small)."
    )

    @model_validator(mode="after")
    def _production_needs_real_backends(self) -> Settings:
        # Fail at start-up rather than run a hospital on the demo's embedded database.
        if self.environment == "production" and not self.database_url:
            raise ValueError("NEURONOVA_DATABASE_URL must be set in production")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to an SQLite file under data_dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'neuronova.db'}"

    @property
    def stack_dir(self) -> Path:
        return self.data_dir / "stack"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def backup_dir(self) -> Path:
        """Originals held here until their HTJ2K replacement is verified in Orthanc."""
        return self.data_dir / "backup"

    @property
    def orthanc_http_port(self) -> int:
        return urlparse(self.orthanc_url).port or 8042

    @property
    def prefect_port(self) -> int:
        return urlparse(self.prefect_api_url).port or 4200
