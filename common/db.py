"""Database schema (SQLModel) and lifecycle: MySQL through pymysql in production, SQLite embedded.

The schema changes only through Alembic migrations in `common/migrations/`; `migrate()` brings
any database to the head revision and is safe to call at every start.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, Engine, Text, UniqueConstraint, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine

from common.errors import TransientUpstreamError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest migration's revision; a test checks it against Alembic's own view of the head.
SCHEMA_HEAD = "0012"


def utcnow() -> datetime:
    """Timezone-aware now (SQLModel stores it as UTC on both backends)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """MariaDB hands datetimes back without a zone; they were written as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Study(SQLModel, table=True):
    """One study in the archive, as indexed after verified storage."""

    __tablename__ = "studies"
    study_instance_uid: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(index=True, max_length=64)
    study_date: str | None = Field(default=None, max_length=8, index=True)
    accession_number: str | None = Field(default=None, max_length=16)
    study_description: str | None = Field(default=None, max_length=64)
    modalities: str = Field(default="", max_length=64)
    ai_state: str | None = Field(
        default=None,
        max_length=16,
        description="The AI reading's run: queued, running, failed or done; null when none was "
        "asked for (tasks.inference.results.AiState).",
    )
    orthanc_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Series(SQLModel, table=True):
    """One series of a study."""

    __tablename__ = "series"
    series_instance_uid: str = Field(primary_key=True, max_length=64)
    study_instance_uid: str = Field(
        foreign_key="studies.study_instance_uid", index=True, max_length=64
    )
    modality: str | None = Field(default=None, max_length=16)
    series_number: int | None = None
    orthanc_id: str | None = Field(default=None, max_length=64)


class Instance(SQLModel, table=True):
    """One stored instance: what came in, what Orthanc holds, and the hashes that prove it."""

    __tablename__ = "instances"
    sop_instance_uid: str = Field(primary_key=True, max_length=64)
    series_instance_uid: str = Field(
        foreign_key="series.series_instance_uid", index=True, max_length=64
    )
    study_instance_uid: str = Field(index=True, max_length=64)
    sop_class_uid: str = Field(max_length=64)
    orthanc_id: str = Field(index=True, max_length=64)
    transfer_syntax: str = Field(max_length=64)
    source_transfer_syntax: str = Field(max_length=64)
    action: str = Field(max_length=32, description="transcoded, already_htj2k, kept_lossy, …")
    reason: str | None = Field(default=None, max_length=512)
    lossless: bool
    pixel_sha256: str | None = Field(default=None, max_length=64)
    stored_sha256: str = Field(max_length=64, description="The file Orthanc returned on read-back.")
    bytes_in: int
    bytes_stored: int
    source: str = Field(default="ingest", max_length=16, description="ingest or c-store")
    verified_at: datetime = Field(default_factory=utcnow)


class QuarantineItem(SQLModel, table=True):
    """An input that was not stored, kept with the reason (bad input or a UID conflict)."""

    __tablename__ = "quarantine"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16, description="quarantined or conflict")
    source_path: str = Field(max_length=1024)
    kept_path: str = Field(max_length=1024)
    sha256: str = Field(index=True, max_length=64)
    reason: str = Field(max_length=1024)
    sop_instance_uid: str | None = Field(default=None, index=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- accounts and audit


class Role(StrEnum):
    """A user's role, as stored in `users.role`."""

    CLINICIAN = "clinician"  # opens the studies of the patients on their care list
    RADIOLOGIST = "radiologist"  # opens every study
    ADMIN = "admin"  # opens every study, manages users, sees the Prefect UI
    UPLOADER = "uploader"  # stores studies by STOW-RS; opens nothing


class User(SQLModel, table=True):
    """Someone who logs in to the webapp; the password only as an argon2 hash."""

    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True, max_length=64)
    password_hash: str = Field(max_length=255)
    role: str = Field(max_length=16, description="a Role value")
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class BreakGlassGrant(SQLModel, table=True):
    """A clinician's emergency access to a patient outside their care list: asked for by the
    patient's full MRN with a reason, for a limited time (`break_glass_minutes`), audited, and
    listed for admins. Rows are kept after they expire: they are the record of who looked."""

    __tablename__ = "break_glass_grants"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    patient_id: str = Field(index=True, max_length=64)
    reason: str = Field(max_length=500)
    opened_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class CareGrant(SQLModel, table=True):
    """A patient on a clinician's care list: the clinician may open that patient's studies."""

    __tablename__ = "care_grants"
    user_id: int = Field(foreign_key="users.id", primary_key=True)
    patient_id: str = Field(primary_key=True, max_length=64)
    granted_at: datetime = Field(default_factory=utcnow)


class AuthSession(SQLModel, table=True):
    """One login. Every token issued under it carries its `sid`; logout revokes them all."""

    __tablename__ = "auth_sessions"
    sid: str = Field(primary_key=True, max_length=32)
    user_id: int = Field(foreign_key="users.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked_at: datetime | None = None


class RevokedToken(SQLModel, table=True):
    """The persistent jti blocklist (rows may be dropped once `expires_at` has passed)."""

    __tablename__ = "revoked_tokens"
    jti: str = Field(primary_key=True, max_length=64)
    token_type: str = Field(max_length=16)
    user_id: int | None = Field(default=None, index=True)
    expires_at: datetime = Field(index=True)
    revoked_at: datetime = Field(default_factory=utcnow)


class LoginFailure(SQLModel, table=True):
    """A failed login, counted per name and per client address for the rate limit."""

    __tablename__ = "login_failures"
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, max_length=64)
    client_addr: str = Field(index=True, max_length=45)
    at: datetime = Field(default_factory=utcnow, index=True)


class AuditEvent(SQLModel, table=True):
    """Who asked for what, from where, and what the answer was. Never a token or a password."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    username: str | None = Field(default=None, index=True, max_length=64)
    client_addr: str | None = Field(default=None, max_length=45)
    action: str = Field(max_length=32, description="login, viewer-link, metadata, frames, …")
    study_instance_uid: str | None = Field(default=None, index=True, max_length=64)
    patient_id: str | None = Field(default=None, index=True, max_length=64)
    outcome: str = Field(max_length=16, description="allowed or denied")
    status: int
    reason: str | None = Field(default=None, max_length=255)
    request_id: str = Field(max_length=64, index=True)


# --------------------------------------------------------------------------- patients


class CachedPatient(SQLModel, table=True):
    """The local cache of a patient's FHIR Patient, by MRN (the first stop of every look-up)."""

    __tablename__ = "patients"
    mrn: str = Field(primary_key=True, max_length=64)
    fhir_id: str | None = Field(default=None, max_length=64)
    emr_uuid: str | None = Field(default=None, index=True, max_length=64)
    resource: str = Field(sa_column=Column(Text, nullable=False))
    display_name: str | None = Field(
        default=None,
        max_length=255,
        description="The resource's name as people write it (tasks.patients.convert."
        "display_name), kept with the resource: what the worklist shows and searches.",
    )
    source: str = Field(max_length=8, description="where it was found: fhir or emr")
    fhir_pending: bool = Field(
        default=False, index=True, description="FHIR was down: the write-back is still owed"
    )
    emr_updated: str | None = Field(default=None, max_length=32, description="OpenEMR's `date`")
    updated_at: datetime = Field(default_factory=utcnow)


class PatientMergeFlag(SQLModel, table=True):
    """An MRN that several FHIR Patients carry: a person must merge them; nothing is created."""

    __tablename__ = "patient_merge_flags"
    mrn: str = Field(primary_key=True, max_length=64)
    reason: str = Field(max_length=255)
    flagged_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- arrivals


class ChangeCursor(SQLModel, table=True):
    """How far the arrival watcher has read Orthanc's change log (`/changes`): a restart goes
    on from here, so nothing that became stable while a part was down is missed."""

    __tablename__ = "orthanc_change_cursor"
    source: str = Field(primary_key=True, max_length=64, description="Which Orthanc: its AET.")
    last_seq: int
    updated_at: datetime = Field(default_factory=utcnow)


class StudyLock(SQLModel, table=True):
    """One study processed by one run at a time (`tasks/archive/study_lock.py`): a lease that
    its holder renews while it lives, so that a holder that died frees the study on its own."""

    __tablename__ = "study_locks"
    orthanc_study_id: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=64, description="Who holds it: a flow run id, a host:pid.")
    expires_at: datetime


class ArrivalState(StrEnum):
    PENDING = "pending"  # seen stable; its flow run not created yet (or to be created again)
    SUBMITTED = "submitted"  # a `process_arrival` run exists (flow_run_id)
    DONE = "done"  # the run finished; `detail` says what it did
    FAILED = "failed"  # runs failed `arrival_max_attempts` times: re-run by hand


class StudyArrival(SQLModel, table=True):
    """A study that became stable in Orthanc (one row per StableStudy change), and what became
    of it. The change's sequence number makes a re-read of the change log change nothing."""

    __tablename__ = "study_arrivals"
    orthanc_study_id: str = Field(primary_key=True, max_length=64)
    change_seq: int = Field(primary_key=True)
    state: str = Field(default=ArrivalState.PENDING, max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    flow_run_id: str | None = Field(default=None, max_length=36)
    study_instance_uid: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=512)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- AI results


class InferenceResult(SQLModel, table=True):
    """One model's reading of one series of a study: what ran where, what it found, where the
    results went.

    One row per (study, series, model, version): the business key that makes inference
    idempotent; a series that arrives later gets a row (and a SEG, a report) of its own.
    """

    __tablename__ = "inference_results"
    __table_args__ = (
        UniqueConstraint(
            "study_instance_uid",
            "series_instance_uid",
            "model_name",
            "model_version",
            name="uq_inference_series_model",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(index=True, max_length=64)
    series_instance_uid: str = Field(max_length=64, description="The MR series that was read.")
    patient_id: str = Field(index=True, max_length=64)
    model_name: str = Field(max_length=128)
    model_version: str = Field(max_length=32)
    model_sha256: str = Field(max_length=64)
    status: str = Field(max_length=16, description="segmented (SEG stored, FHIR owed) or completed")
    device: str = Field(max_length=32, description="Where the network ran: cpu, cuda:0 …")
    lesion_count: int
    lesion_volume_ml: float
    seg_series_uid: str = Field(max_length=64)
    seg_sop_instance_uid: str = Field(index=True, max_length=64)
    sr_series_uid: str | None = Field(
        default=None, max_length=64, description="The TID 1500 SR's series (null before 0011)."
    )
    sr_sop_instance_uid: str | None = Field(default=None, index=True, max_length=64)
    key_sop_instance_uid: str | None = Field(
        default=None,
        max_length=64,
        description="The MR slice with the largest lesion area (the middle one when none): "
        "where the viewer opens.",
    )
    fhir_report_id: str | None = Field(default=None, max_length=64)
    fhir_patient_id: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, max_length=512, description="Why FHIR is still owed.")
    timings: str = Field(sa_column=Column(Text, nullable=False), description="JSON: step → s")
    alerted_at: datetime | None = Field(
        default=None, description="When the clinicians' alert went out; null while owed."
    )
    created_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None


class InferenceFinding(SQLModel, table=True):
    """One lesion of a reading: its SEG segment, its SR groups, its FHIR Observation and the
    verdicts on it share its Tracking UID (derived: the same lesion of the same series read by
    the same model version keeps it)."""

    __tablename__ = "inference_findings"
    __table_args__ = (UniqueConstraint("result_id", "number", name="uq_finding_number"),)

    id: int | None = Field(default=None, primary_key=True)
    result_id: int = Field(foreign_key="inference_results.id", index=True)
    number: int = Field(description="1 = the largest lesion; its SEG segment number")
    tracking_uid: str = Field(unique=True, max_length=64)
    label: str = Field(max_length=64, description='"Lesion 1" …: the Tracking Identifier')
    volume_ml: float
    key_sop_instance_uid: str | None = Field(
        default=None, max_length=64, description="The MR slice where its area is largest."
    )
    fhir_observation_id: str | None = Field(default=None, max_length=64)


class Verdict(StrEnum):
    """A reader's verdict on an AI reading or one of its findings (IHE AIRA)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # with a reason
    CORRECTED = "corrected"  # with the corrected SEG the reader saved


class ReadingVerdict(SQLModel, table=True):
    """A reader's verdict, append-only: a later one on the same reading or finding supersedes
    it (the current one is the newest), and every one stays on record.

    `fhir_sent_at` is null while the FHIR side (statuses, the reader, a Provenance named by
    `uid`) is owed; `send_owed_verdicts` pays it.
    """

    __tablename__ = "reading_verdicts"

    id: int | None = Field(default=None, primary_key=True)
    uid: str = Field(unique=True, max_length=36, description="Names its FHIR Provenance.")
    result_id: int = Field(foreign_key="inference_results.id", index=True)
    finding_tracking_uid: str | None = Field(
        default=None, max_length=64, description="Null: the verdict is on the whole reading."
    )
    verdict: str = Field(max_length=16, description="a Verdict value")
    reason: str | None = Field(default=None, max_length=500)
    corrected_seg_sop_instance_uid: str | None = Field(default=None, max_length=64)
    corrected_volumes: str | None = Field(
        default=None,
        sa_column=Column(Text, nullable=True),
        description="JSON: finding Tracking UID (or a new segment's label) → mL, as corrected.",
    )
    user_id: int = Field(foreign_key="users.id", index=True)
    username: str = Field(max_length=64)
    at: datetime = Field(default_factory=utcnow, index=True)
    fhir_sent_at: datetime | None = Field(default=None, index=True)
    fhir_note: str | None = Field(default=None, max_length=255, description="Why FHIR is owed.")


@cache
def get_engine(url: str) -> Engine:
    """One engine per URL per process; pre-ping so a dropped MySQL connection is replaced."""
    connect_args: dict[str, object] = {}
    if url.startswith("sqlite"):
        # Flows use worker threads; SQLite's same-thread guard is for sqlite3 misuse, not ours.
        connect_args = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, pool_pre_ping=True, pool_recycle=3600, connect_args=connect_args)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    """WAL lets the CLI read while a flow writes; foreign keys are off by default in SQLite."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> Config:
    """Alembic configuration without an .ini file, pointing at our migrations."""
    from alembic.config import Config  # imported here: Alembic costs seconds at start-up

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def ensure_schema(url: str) -> None:
    """Migrate unless the database is already at SCHEMA_HEAD (checked without Alembic).

    Flows call this on every run; importing Alembic costs seconds here, a query milliseconds.
    """
    try:
        with get_engine(url).connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        current = None  # no table yet: a new database
    if current != SCHEMA_HEAD:
        migrate(url)


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema (idempotent).

    Under a lock: web workers and flows starting together on a new database would otherwise
    each run the first migration, and all but one fail ("table already exists").
    """
    from alembic import command

    with named_lock(url, "nn-migrate", lock_dir_for(url), timeout_s=120):
        command.upgrade(alembic_config(url), "head")


def lock_dir_for(url: str) -> Path | None:
    """Where `named_lock` keeps its lock files for this database: a SQLite database's own
    folder; None for MySQL (its locks live in the server)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///")).parent


@contextmanager
def named_lock(
    url: str, name: str, lock_dir: Path | None, *, timeout_s: int = 30
) -> Iterator[None]:
    """One holder at a time, across threads and processes: MySQL's `GET_LOCK`, or a lock file
    in `lock_dir` (SQLite: the database's own folder). TransientUpstreamError on time-out."""
    if url.startswith("mysql"):
        with get_engine(url).connect() as connection:
            got = connection.execute(
                text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": timeout_s}
            ).scalar()
            if got != 1:
                raise TransientUpstreamError(f"{name} is busy (lock not granted in {timeout_s} s)")
            try:
                yield
            finally:
                connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        return
    if lock_dir is None:
        raise ValueError("a lock on this database needs a folder for its lock file")
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
