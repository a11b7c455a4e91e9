"""NeuroNova settings: one pydantic-settings class, built once at an entry point and passed down."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIN_SECRET_LENGTH = 32
# The local stack's MariaDB account (its root is reachable only through the unix socket).
STACK_MYSQL_USER = "neuronova"
STACK_ORTHANC_USER = "neuronova"  # the service account our clients and nginx use
DEMO_EMR_CLIENT_ID = "neuronova-demo-client"  # the EMR emulator's; production refuses it


class DicomModality(BaseModel):
    """A modality allowed to send studies to the archive by C-STORE (Orthanc checks the calling
    AET and the address it comes from; anyone else's association is refused and logged)."""

    aet: str = Field(pattern=r"^[A-Za-z0-9_.-][A-Za-z0-9_ .-]{0,15}$")
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")
    port: int = Field(default=104, ge=1, le=65535)


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
        "SQLite under data_dir when unset (the embedded default). Keep the password out of "
        "it: NEURONOVA_DATABASE_PASSWORD (or _FILE) is put in as it is, any character allowed.",
    )
    database_password: SecretStr | None = Field(
        default=None,
        description="The database account's password, set into NEURONOVA_DATABASE_URL (which "
        "then names the user only): a '/', '@' or '%' in it needs no escaping.",
    )

    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_dicom_port: int = 4242
    orthanc_aet: str = "NEURONOVA"
    dicom_modalities: list[DicomModality] = Field(
        default_factory=lambda: [DicomModality(aet="STORESCU", host="127.0.0.1", port=11112)],
        description="Who may C-STORE to the archive, as JSON: "
        '[{"aet": "CT1", "host": "10.1.2.3", "port": 104}]. The default is dcmtk\'s storescu '
        "on this machine (the demo and the tests).",
    )
    orthanc_username: str | None = None
    orthanc_password: SecretStr | None = None
    orthanc_timeout_s: float = Field(default=30.0, gt=0)
    orthanc_retry_delays_s: list[float] = Field(
        default=[2.0, 10.0, 30.0],
        description="Waits before each Prefect retry of a failed Orthanc batch (jittered).",
    )

    prefect_api_url: str = "http://127.0.0.1:4200/api"
    # Unset: the schedules in deployments/prefect.yaml (02:30 and every 30 minutes, UTC).
    htj2k_check_cron: str | None = Field(
        default=None,
        description="When the archive-wide HTJ2K check runs (cron, in "
        "NEURONOVA_SCHEDULE_TIMEZONE); unset: prefect.yaml's.",
    )

    schedule_timezone: str = Field(
        default="UTC",
        description="The time zone the schedules' cron expressions are read in (IANA name, "
        "e.g. Europe/Berlin): the nightly check at 02:30 runs at 02:30 there, daylight saving "
        "included.",
    )
    patient_sync_cron: str | None = Field(
        default=None,
        description="When the bulk EMR → FHIR → cache sync runs (cron, in "
        "NEURONOVA_SCHEDULE_TIMEZONE); unset: the yaml's.",
    )
    ingest_workers: int = Field(default=4, ge=1, le=64, description="Concurrent Orthanc uploads.")
    ingest_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Worker processes that read, transcode and verify inputs (0: one per CPU).",
    )
    # What one input may cost (tasks/ingest/limits.py): over a limit, it is quarantined.
    ingest_max_file_bytes: int = Field(default=2 * 1024**3, ge=1024)
    ingest_max_zip_members: int = Field(default=100_000, ge=1)
    ingest_max_zip_total_bytes: int = Field(default=64 * 1024**3, ge=1024)
    ingest_max_zip_ratio: int = Field(default=200, ge=2)
    ingest_max_pixel_bytes: int = Field(default=2 * 1024**3, ge=1024)
    ingest_max_frames: int = Field(default=10_000, ge=1)
    stow_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="The largest STOW-RS request body (POST /dicom-web/studies); a larger one "
        "gets 413 before it is read.",
    )
    # 256: a task run costs Prefect's server and client about 50 ms of CPU, which at 64 was
    # a tenth of a batch's; a batch keeps its uploads busy by itself (tasks/ingest/batch.py).
    ingest_batch_size: int = Field(
        default=256, ge=1, description="Instances per Prefect task run (keeps overhead small)."
    )

    gateway_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The base URL browsers use: nginx, which serves OHIF, /api and the gate.",
    )
    webapp_url: str = Field(
        default="http://127.0.0.1:8081",
        description="Where gunicorn serves the webapp (loopback; only nginx talks to it).",
    )
    fhir_url: str = Field(
        default="http://127.0.0.1:8090/fhir/R4", description="The FHIR R4 base URL."
    )
    fhir_timeout_s: float = Field(default=10.0, gt=0)
    emr_url: str = Field(default="http://127.0.0.1:8300", description="OpenEMR's base URL.")
    emr_client_id: str = DEMO_EMR_CLIENT_ID
    emr_client_secret: SecretStr | None = None
    emr_username: str = "admin"
    emr_password: SecretStr | None = None
    emr_timeout_s: float = Field(default=10.0, gt=0)
    emr_demo_patients: int = Field(
        default=200, ge=0, description="Synthetic patients the local EMR emulator starts with."
    )
    mrn_system: str = Field(
        default="urn:neuronova:mrn",
        description="The identifier system of the hospital's MRN (OpenEMR pubpid) in FHIR.",
    )
    model_bundle_dir: Path = Field(
        default=PROJECT_ROOT / "models" / "brain_lesion_seg",
        description="The MONAI bundle inference runs (any bundle directory: configs/, models/).",
    )
    inference_device: str | None = Field(
        default=None,
        description="torch device for inference (cuda, cuda:1, cpu); CUDA when present if unset.",
    )
    gpu_pool_concurrency: int = Field(
        default=1, ge=1, description="Inference runs at once on the gpu work pool: one per GPU."
    )
    orthanc_stable_age_s: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="Seconds without a new instance after which Orthanc calls a study stable "
        "and the arrival watcher hands it on (Orthanc's StableAge). Unset: 60 in compose, "
        "5 in the local stack.",
    )
    arrivals_poll_s: float = Field(
        default=2.0, gt=0, le=60, description="How often the arrival watcher reads /changes."
    )
    arrivals_from: Literal["beginning", "now"] = Field(
        default="beginning",
        description="Where a watcher with no cursor starts in Orthanc's change log: the "
        "beginning (every study already there is checked once) or now.",
    )
    arrivals_max_in_flight: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="`process_arrival` runs the arrival watcher keeps submitted at once; the "
        "rest wait in the database, newest first with the oldest beside it, so that a backlog "
        "never queues a new study behind it. Set it to what the cpu pool runs at once (workers "
        "× their limit: 1 × 4 in the local stack).",
    )
    arrival_max_attempts: int = Field(
        default=3, ge=1, le=20, description="Runs of one arrival before it is left as failed."
    )
    flow_heartbeat_s: int = Field(
        default=30,
        ge=30,
        le=600,
        description="How often a flow run started by a worker tells the Prefect server it is "
        "alive (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; Prefect's floor is 30).",
    )
    flow_crashed_after_s: int = Field(
        default=120,
        ge=60,
        le=3600,
        description="A worker's flow run silent this long (no heartbeat, no final state: its "
        "process died) is marked Crashed, so that its work is started again.",
    )
    patient_sync_after_ingest: bool = Field(
        default=True, description="Sync each ingested study's patient (cache → FHIR → EMR)."
    )
    inference_after_ingest: bool = Field(
        default=True, description="Run inference when ingest stores an MR brain study."
    )
    handoff: Literal["subflow", "deployment"] = Field(
        default="subflow",
        description="How ingest hands a study to inference: `subflow` runs it in the ingest "
        "run's own process; `deployment` triggers `run_inference/one-study` on the gpu pool and "
        "waits for it. Both show as linked runs in the UI. Patient sync is always a subflow.",
    )
    handoff_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="How long ingest waits for a hand-off deployment run before reporting it "
        "as still running (it goes on; its result is in the UI and `inference_results`).",
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="The services' logs (webapp, workers) on stderr: JSON lines carrying "
        "request_id / study_uid / flow_run_id (common.logs), or text for reading by eye.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="How a flow fans its tasks out: `threads` in the flow run's own process, "
        "`dask` over a Dask cluster (NEURONOVA_DASK_ADDRESS, or a local one on loopback).",
    )
    task_runner_workers: int = Field(
        default=2, ge=1, le=256, description="Threads, or local Dask worker processes, per run."
    )
    dask_address: str | None = Field(
        default=None,
        description="An existing Dask scheduler (tcp://host:8786) for `task_runner=dask`; unset: "
        "each run starts a local cluster on loopback.",
    )
    dask_scheduler_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="The local Dask cluster's scheduler port on 127.0.0.1 (0: any free port).",
    )
    dask_dashboard_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The local Dask cluster's dashboard on 127.0.0.1; unset: no dashboard.",
    )
    worker_limit: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Flow runs at once per local-stack worker (`prefect worker start --limit`): "
        "each is a process that loads the flow's code (~0.3 GB).",
    )
    worker_health_port: int = Field(
        default=8085,
        ge=1,
        le=65534,  # the gpu worker takes the next port
        description="The local stack's cpu worker answers /health here (loopback); the gpu "
        "worker on the next port.",
    )
    inference_min_slices: int = Field(
        default=16, ge=1, description="Fewer slices than this is not a volume worth segmenting."
    )
    trusted_proxies: list[str] = Field(
        default=["127.0.0.1", "::1"],
        description="Peers whose X-Real-IP the webapp believes (nginx's address).",
    )
    webapp_workers: int = Field(default=2, ge=1, le=64)
    webapp_threads: int = Field(default=4, ge=1, le=64)
    alerts_url: str = Field(
        default="http://127.0.0.1:8082",
        description="The alerts pool (server-sent events), on loopback behind nginx: the same "
        "app as the webapp in its own processes, so open streams never hold the gate's threads.",
    )
    alerts_threads: int = Field(
        default=64, ge=1, le=1024, description="Open alert streams the alerts pool holds at once."
    )
    alerts_heartbeat_s: float = Field(
        default=15.0, gt=0, description="A comment line this often keeps idle streams open."
    )
    alerts_streams_per_user: int = Field(
        default=5, ge=1, description="Open alert streams one user may hold (tabs, devices)."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for alert pub/sub, with its password (production). Unset: the local "
        "stack's own Redis (demo, tests); empty: no alerts are sent or streamed (never in "
        "production). Keep the password out of it: NEURONOVA_REDIS_PASSWORD (or _FILE).",
    )
    redis_password: SecretStr | None = Field(
        default=None, description="Redis's password, set into NEURONOVA_REDIS_URL as it is."
    )
    # The local stack's own Redis and MariaDB listen on loopback at these ports, never the
    # standard ones: a server the machine happens to run is then neither used nor in the way.
    stack_redis_port: int = Field(default=16379, ge=1, le=65535)
    stack_mysql_port: int = Field(default=13306, ge=1, le=65535)
    alerts_channel: str = Field(default="neuronova:alerts", min_length=1)
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="Signs every token (>= 32 characters). Required in production; the demo and "
        "the tests keep a generated one in data_dir/secrets/.",
    )
    access_token_ttl_s: int = Field(default=900, ge=30, le=86400)
    refresh_token_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 86400)
    break_glass_minutes: int = Field(
        default=60,
        ge=5,
        le=24 * 60,
        description="How long a clinician's break-glass access to a patient off the list lasts.",
    )
    viewer_link_ttl_s: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="How long a viewer link may wait to be opened (once) before it expires.",
    )
    viewer_token_ttl_s: int = Field(
        default=1800,
        ge=30,
        le=86400,
        description="How long an opened viewer keeps its study open in that browser.",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed logins per user name and client address in the window before a "
        "429; the wait then doubles with each further failure (up to a day).",
    )
    login_max_failures_per_client: int = Field(
        default=20, ge=1, description="Failed logins per client address in the window."
    )
    login_failure_window_s: int = Field(default=300, ge=1)
    patient_lookups_per_minute: int = Field(
        default=30,
        ge=1,
        description="Patient look-ups per user per minute that miss the cache (each one asks "
        "FHIR and the EMR); more get a 429. Cache hits are not counted.",
    )

    @model_validator(mode="after")
    def _production_needs_real_backends(self) -> Settings:
        # The signing secret is required where tokens are signed and checked: the webapp
        # refuses to start without it (`jwt_secret_bytes`). The Prefect workers never sign
        # anything, so they are not given it (docker-compose.yml), and must still start.
        # A short secret is refused everywhere: anyone could compute the signing keys.
        if (
            self.jwt_secret is not None
            and len(self.jwt_secret.get_secret_value()) < MIN_SECRET_LENGTH
        ):
            raise ValueError(f"NEURONOVA_JWT_SECRET needs at least {MIN_SECRET_LENGTH} characters")
        if self.environment == "production":
            self._refuse_demo_backends()
        # Orthanc demands its service account from everyone (no generated one in production).
        if self.environment == "production" and self.orthanc_password is None:
            raise ValueError(
                "NEURONOVA_ORTHANC_PASSWORD must be set in production (Orthanc's service account)"
            )
        try:
            ZoneInfo(self.schedule_timezone)
        except (ValueError, ZoneInfoNotFoundError) as err:
            raise ValueError(
                f"NEURONOVA_SCHEDULE_TIMEZONE={self.schedule_timezone!r} is no time zone: give "
                "an IANA name such as Europe/Berlin"
            ) from err
        # One late heartbeat (a loaded machine, a slow server) must not crash a live run.
        if self.flow_crashed_after_s < 2 * self.flow_heartbeat_s:
            raise ValueError(
                "NEURONOVA_FLOW_CRASHED_AFTER_S must be at least twice "
                f"NEURONOVA_FLOW_HEARTBEAT_S ({self.flow_heartbeat_s} s)"
            )
        return self

    def _refuse_demo_backends(self) -> None:
        """Production fails at start-up rather than run a hospital on what the demo stands in
        with: the embedded database, no alerts, the EMR emulator's demo client."""
        if not self.database_url:
            raise ValueError("NEURONOVA_DATABASE_URL must be set in production")
        if self.database_url.startswith("sqlite"):
            raise ValueError(
                "NEURONOVA_DATABASE_URL is SQLite, which production refuses (one writer at a "
                "time, one host): give it the MySQL/MariaDB server (mysql+pymysql://…)"
            )
        if not self.redis_url:
            raise ValueError(
                "NEURONOVA_REDIS_URL must be set in production: without Redis no alert reaches "
                "a clinician (redis://redis:6379/0, its password in NEURONOVA_REDIS_PASSWORD)"
            )
        if self.emr_client_id == DEMO_EMR_CLIENT_ID:
            raise ValueError(
                "NEURONOVA_EMR_CLIENT_ID is the EMR emulator's demo client: register NeuroNova "
                "as an API client in the hospital's OpenEMR and set its id"
            )
        if self.emr_client_secret is None or self.emr_password is None:
            raise ValueError(
                "NEURONOVA_EMR_CLIENT_SECRET and NEURONOVA_EMR_PASSWORD must be set in "
                "production (the demo's are generated for its emulator only)"
            )

    @property
    def resolved_database_url(self) -> str:
        """The database URL (its password set in from database_password), defaulting to an
        SQLite file under data_dir."""
        if not self.database_url:
            return f"sqlite:///{self.data_dir / 'neuronova.db'}"
        if self.database_password is None:
            return self.database_url
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url).set(password=self.database_password.get_secret_value())
        return url.render_as_string(hide_password=False)

    @property
    def resolved_redis_url(self) -> str | None:
        """Redis for alerts: the configured URL; unset, the local stack's own (with its
        generated password; never in production); empty, None (no alerts)."""
        if self.redis_url is not None:
            if not self.redis_url or self.redis_password is None:
                return self.redis_url or None
            parts = urlparse(self.redis_url)
            password = quote(self.redis_password.get_secret_value(), safe="")
            host = parts.netloc.rpartition("@")[2]
            return parts._replace(netloc=f":{password}@{host}").geturl()
        if self.environment == "production":
            return None
        return f"redis://:{self.stack_redis_password()}@127.0.0.1:{self.stack_redis_port}/0"

    def stack_redis_password(self) -> str:
        """The local stack's Redis password (`requirepass`), generated once under secrets/."""
        return self.generated_secret("redis.password", lambda: secrets.token_urlsafe(24))

    def orthanc_credentials(self) -> tuple[str, str] | None:
        """Orthanc's service account (HTTP basic auth): the configured one; unset, the local
        stack's own (its password generated once under secrets/; never in production)."""
        if self.orthanc_password is not None:
            password = self.orthanc_password.get_secret_value()
        elif self.environment == "production":
            return None
        else:
            password = self.generated_secret("orthanc.password", lambda: secrets.token_urlsafe(24))
        return (self.orthanc_username or STACK_ORTHANC_USER, password)

    def stack_prefect_auth_string(self) -> str:
        """The local Prefect server's auth string (PREFECT_SERVER_API_AUTH_STRING), generated
        once under secrets/: workers and the CLI send it, nginx adds it for admins."""
        return self.generated_secret("prefect.auth", lambda: secrets.token_urlsafe(32))

    def stack_mysql_credentials(self) -> dict[str, str]:
        """The local stack's MariaDB account, its password generated once under secrets/."""
        password = self.generated_secret("mysql.password", lambda: secrets.token_urlsafe(24))
        return {"username": STACK_MYSQL_USER, "password": password}

    def stack_mysql_url(self, database: str = "") -> str:
        """A SQLAlchemy URL for the local stack's MariaDB (with its password)."""
        account = self.stack_mysql_credentials()
        user, password = quote(account["username"]), quote(account["password"], safe="")
        return (
            f"mysql+pymysql://{user}:{password}@127.0.0.1:{self.stack_mysql_port}/{database}"
            "?charset=utf8mb4"
        )

    @property
    def stack_dir(self) -> Path:
        return self.data_dir / "stack"

    @property
    def results_dir(self) -> Path:
        """AI results kept as files (the SEG as stored, the overlay PNG), per study."""
        return self.data_dir / "results"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def backup_dir(self) -> Path:
        """Originals held here until their HTJ2K replacement is verified in Orthanc."""
        return self.data_dir / "backup"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def gateway_port(self) -> int:
        return urlparse(self.gateway_url).port or 80

    @property
    def webapp_port(self) -> int:
        return urlparse(self.webapp_url).port or 8081

    @property
    def alerts_port(self) -> int:
        return urlparse(self.alerts_url).port or 8082

    def generated_secret(self, name: str, make: Callable[[], str]) -> str:
        """A secret made once by `make` and kept in `secrets_dir/name` (0600), so that every
        gunicorn worker, the CLI and a restarted stack share it (demo and tests only)."""
        path = self.secrets_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Written aside, then linked into place: a concurrent reader never sees it half-written.
            tmp = path.with_name(f".{name}.{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(make() + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race; use its secret
            finally:
                tmp.unlink()
        return path.read_text().strip()

    def jwt_secret_bytes(self) -> bytes:
        """The signing secret: the configured one, else (demo, tests) one generated and kept.

        Production refuses to start without NEURONOVA_JWT_SECRET.
        """
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value().encode()
        if self.environment == "production":
            raise ValueError("NEURONOVA_JWT_SECRET must be set in production")
        secret = self.generated_secret("jwt_secret", lambda: secrets.token_urlsafe(48)).encode()
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"{self.secrets_dir / 'jwt_secret'} holds a secret shorter than "
                f"{MIN_SECRET_LENGTH} characters"
            )
        return secret

    def emr_credentials(self) -> dict[str, str]:
        """OpenEMR's OAuth client and user: the configured ones, else the local emulator's demo
        account, generated once under secrets/."""

        def generate() -> str:
            return json.dumps(
                {"client_secret": secrets.token_urlsafe(24), "password": secrets.token_urlsafe(18)}
            )

        stored = json.loads(self.generated_secret("emr-demo.json", generate))
        secret, password = self.emr_client_secret, self.emr_password
        return {
            "client_id": self.emr_client_id,
            "client_secret": secret.get_secret_value() if secret else stored["client_secret"],
            "username": self.emr_username,
            "password": password.get_secret_value() if password else stored["password"],
        }

    @property
    def fhir_port(self) -> int:
        return urlparse(self.fhir_url).port or 80

    @property
    def emr_port(self) -> int:
        return urlparse(self.emr_url).port or 80

    @property
    def orthanc_http_port(self) -> int:
        return urlparse(self.orthanc_url).port or 8042

    @property
    def prefect_port(self) -> int:
        return urlparse(self.prefect_api_url).port or 4200
