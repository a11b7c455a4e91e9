"""The audit trail: one row per login, link and image request, never a token or a password.

Denials, logins and links are written before the answer leaves (they are rare and they are
what an investigation looks for). Allowed image reads are many (one per frame or file), so
they go through a queue that a background thread writes in batches every fraction of a
second; a worker that stops normally flushes it first. A worker killed with SIGKILL can lose
at most that fraction of a second of allowed reads, never a denial.

Under a flood of denied requests (a script hammering the gate without a token), writing each
denial before answering would make the database the bottleneck for everyone. So the gate's
denials are written one by one up to `DENIALS_PER_S` a second per process; beyond that,
alike denials (same action, status, address, user, reason) are counted and written as one
row per interval that says how many there were (`record_denial`). Nothing is dropped
uncounted.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert

from common.db import AuditEvent, get_engine
from webapp.gate_paths import GateKind

log = logging.getLogger(__name__)

_FLUSH_INTERVAL_S = 0.2
_MAX_BATCH = 500
DENIALS_PER_S = 50  # written one by one, per process; beyond, counted (record_denial)


class Action(StrEnum):
    """What an audit row records, besides the gate's reads (those are a `GateKind`)."""

    LOGIN = "login"
    REFRESH = "refresh"
    LOGOUT = "logout"
    STUDY_LIST = "study-list"
    VIEWER_LINK = "viewer-link"
    VIEWER_OPEN = "viewer-open"
    PATIENT_LOOKUP = "patient-lookup"
    ALERTS = "alerts"
    ADMIN_UI_LINK = "admin-ui-link"
    ADMIN_UI_LOGIN = "admin-ui-login"
    ADMIN_UI = "admin-ui"
    STOW = "stow"  # an upload by STOW-RS
    WORKLIST = "worklist"  # the signed-in worklist page (webapp/pages.py)
    PAGE = "page"  # a refused form post of our pages (CSRF, origin)
    BREAK_GLASS = "break-glass"  # a clinician's emergency access outside the care list
    READINGS = "readings"  # a study's AI readings and verdicts (webapp/readings.py)
    VERDICT = "ai-verdict"  # a reader's verdict on an AI reading or finding


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"


@dataclass
class AuditRecord:
    action: Action | GateKind
    status: int
    request_id: str
    username: str | None = None
    client_addr: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None
    reason: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def outcome(self) -> Outcome:
        """Allowed for a 2xx or 3xx answer, denied for anything else."""
        return Outcome.ALLOWED if self.status < 400 else Outcome.DENIED

    def row(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "username": (self.username or None) and self.username[:64],
            "client_addr": (self.client_addr or None) and self.client_addr[:45],
            "action": str(self.action)[:32],
            "study_instance_uid": self.study_instance_uid,
            "patient_id": (self.patient_id or None) and self.patient_id[:64],
            "outcome": str(self.outcome),
            "status": self.status,
            "reason": (self.reason or None) and self.reason[:255],
            "request_id": self.request_id[:64],
        }


class AuditLog:
    """Writes audit rows to the database: now, or soon in a batch."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._queue: queue.SimpleQueue[AuditRecord | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._denial_budget = float(DENIALS_PER_S)
        self._denial_refilled = time.monotonic()
        self._alike: dict[tuple[Any, ...], tuple[AuditRecord, int]] = {}

    def record_denial(self, record: AuditRecord) -> None:
        """A denial: written now while denials are few; counted with alike ones in a flood."""
        if self._take_denial_budget():
            self.record_now(record)
            return
        key = (record.action, record.status, record.client_addr, record.username, record.reason)
        with self._lock:
            first, count = self._alike.get(key, (record, 0))
            self._alike[key] = (first, count + 1)
        self._ensure_thread()
        self._idle.clear()
        self._queue.put(None)  # wake the writer: it writes the counts with its next batch

    def _take_denial_budget(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._denial_budget = min(
                float(DENIALS_PER_S),
                self._denial_budget + (now - self._denial_refilled) * DENIALS_PER_S,
            )
            self._denial_refilled = now
            if self._denial_budget < 1.0:
                return False
            self._denial_budget -= 1.0
            return True

    def _counted_denials(self) -> list[AuditRecord]:
        """One row per kind of denial counted since the last batch, saying how many."""
        with self._lock:
            alike, self._alike = self._alike, {}
        rows = []
        for first, count in alike.values():
            reason = f"{count} alike in a flood (counted, not written one by one): {first.reason}"
            rows.append(replace(first, reason=reason, request_id="flood-" + first.request_id))
        return rows

    def record_now(self, record: AuditRecord) -> None:
        """Write one row before returning (denials, logins, links)."""
        self._write([record])

    def record_soon(self, record: AuditRecord) -> None:
        """Queue a row for the next batch (allowed image reads)."""
        self._ensure_thread()
        self._idle.clear()
        self._queue.put(record)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every queued row is written (tests, shutdown)."""
        if self._thread is None:
            return
        self._queue.put(None)  # wakes the writer at once
        self._idle.wait(timeout_s)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # Started lazily: gunicorn forks workers after the app is built, and threads
                # do not survive a fork.
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            batch = self._collect() + self._counted_denials()
            if batch:
                try:
                    self._write(batch)
                except Exception:
                    # Keep the rows: put them back and try again a little later.
                    log.exception("audit: writing %d rows failed; retrying", len(batch))
                    for record in batch:
                        self._queue.put(record)
                    time.sleep(1.0)
                    continue
            if self._queue.empty():
                self._idle.set()

    def _collect(self) -> list[AuditRecord]:
        """Rows that arrive within one interval of the first (one INSERT for all of them).

        A `None` in the queue (from `flush`) ends the wait at once.
        """
        batch: list[AuditRecord] = []
        try:
            first = self._queue.get(timeout=_FLUSH_INTERVAL_S)
        except queue.Empty:
            return batch
        if first is None:
            return self._drain(batch)
        batch.append(first)
        deadline = time.monotonic() + _FLUSH_INTERVAL_S
        while len(batch) < _MAX_BATCH:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                return self._drain(batch)
            batch.append(item)
        return batch

    def _drain(self, batch: list[AuditRecord]) -> list[AuditRecord]:
        """Everything queued now (a flush asked for it)."""
        while len(batch) < _MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        return batch

    def _write(self, records: list[AuditRecord]) -> None:
        with get_engine(self._url).begin() as connection:
            connection.execute(insert(AuditEvent), [r.row() for r in records])
