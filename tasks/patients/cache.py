"""The patients cache (MySQL in production, SQLite embedded) and the per-MRN lock.

Writes go through `write_transaction`, which runs the whole transaction again when the
connection drops mid-way (the rollback leaves nothing half-written; the retry starts clean).
Work for one MRN is serialised across threads and processes by `mrn_lock`: MySQL's
`GET_LOCK`, or a lock file next to an SQLite database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, select

from common.db import CachedPatient, PatientMergeFlag, get_engine, named_lock, session_scope
from tasks.patients.convert import display_name

log = logging.getLogger(__name__)

_TRANSACTION_ATTEMPTS = 3
_LOCK_TIMEOUT_S = 30


def write_transaction[T](url: str, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction; again from the start if the connection was lost."""
    for attempt in range(1, _TRANSACTION_ATTEMPTS + 1):
        try:
            with session_scope(url) as session:
                return work(session)
        except (OperationalError, DBAPIError) as err:
            if (
                not getattr(err, "connection_invalidated", False)
                or attempt == _TRANSACTION_ATTEMPTS
            ):
                raise
            log.warning(
                "database connection lost (attempt %d); running the transaction again", attempt
            )
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def mrn_lock(url: str, mrn: str, lock_dir: Path) -> Iterator[None]:
    """Only one look-up or sync of this MRN at a time, across threads and processes."""
    key = hashlib.sha256(mrn.encode()).hexdigest()[:40]
    with named_lock(url, f"nn-mrn-{key}", lock_dir, timeout_s=_LOCK_TIMEOUT_S):
        yield


def cached_patient(url: str, mrn: str) -> CachedPatient | None:
    with session_scope(url) as session:
        return session.get(CachedPatient, mrn)


_CACHED_RESOURCE = text("SELECT resource FROM patients WHERE mrn = :mrn AND fhir_pending = :no")


def cached_resource(url: str, mrn: str) -> str | None:
    """The cached Patient's JSON when nothing is owed to FHIR (plain SQL: the API's hot path)."""
    with get_engine(url).connect() as connection:
        value = connection.execute(_CACHED_RESOURCE, {"mrn": mrn, "no": False}).scalar()
    return str(value) if value is not None else None


def save_patient(
    url: str,
    *,
    mrn: str,
    resource: dict[str, Any],
    source: str,
    fhir_pending: bool,
    emr_uuid: str | None = None,
    emr_updated: str | None = None,
) -> CachedPatient:
    """Insert or replace the cached Patient of an MRN."""

    def work(session: Session) -> CachedPatient:
        row = session.get(CachedPatient, mrn) or CachedPatient(mrn=mrn, resource="", source=source)
        row.resource = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
        row.display_name = display_name(resource)[:255] or None
        row.fhir_id = resource.get("id") or row.fhir_id
        row.source = source
        row.fhir_pending = fhir_pending
        row.emr_uuid = emr_uuid or row.emr_uuid
        row.emr_updated = emr_updated or row.emr_updated
        row.updated_at = datetime.now(UTC)
        session.add(row)
        return row

    return write_transaction(url, work)


def flag_for_merge(url: str, mrn: str, reason: str) -> None:
    def work(session: Session) -> None:
        if session.get(PatientMergeFlag, mrn) is None:
            session.add(PatientMergeFlag(mrn=mrn, reason=reason[:255]))

    write_transaction(url, work)


def pending_write_backs(url: str, limit: int = 500) -> list[CachedPatient]:
    """Patients whose FHIR write-back is still owed (FHIR was down when they were found)."""
    with session_scope(url) as session:
        query = select(CachedPatient).where(CachedPatient.fhir_pending == True).limit(limit)  # noqa: E712
        return list(session.exec(query))
