"""Studies that arrive by C-STORE (or any other way into Orthanc), found in Orthanc's change log.

The watcher (`neuronova watch-arrivals`, a component of the local stack) repeats three steps:

1. `read_new_arrivals`: read `/changes` from the cursor kept in the database; every
   `StableStudy` (Orthanc's `StableAge` after the study's last instance) becomes a pending
   `study_arrivals` row, and the cursor moves, in one transaction per page. A restart goes on
   from the cursor: a study that became stable while the watcher, the Prefect server or a worker
   was down is found all the same.
2. `submit_due_arrivals`: pending arrivals get a `process_arrival` flow run, at most
   `arrivals_max_in_flight` runs at a time, newest first with the oldest beside it
   (`arrivals_in_turn`): after an outage, the study a modality sends now is not queued behind
   the backlog, and the backlog still drains. When creating a run fails (the Prefect server is
   down), the row stays pending and is tried again with back-off. The run's idempotency key is
   the arrival and its attempt: a request whose answer was lost finds the same run again, so a
   study is never processed twice for one arrival.
3. `follow_submitted`: a run that crashed or failed (a worker killed mid-study) is submitted
   again, up to `arrival_max_attempts`; the flow itself marks its arrival done.

A second StableStudy of a study (a late series, or the check's own replacements) is a new
arrival; processing is idempotent, so it does only what is new (flows/process_arrival.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, func, select

from common.db import (
    ArrivalState,
    ChangeCursor,
    Study,
    StudyArrival,
    as_utc,
    session_scope,
    utcnow,
)
from common.settings import Settings
from tasks.archive.orthanc import OrthancClient, orthanc_study_id

log = logging.getLogger(__name__)

STABLE_STUDY = "StableStudy"
_PAGE = 200
# Back-off of a run that could not be created (Prefect down): 2, 4, 8 … up to 60 s.
_MAX_RETRY_DELAY_S = 60.0
# A run the Prefect server no longer has (deleted by hand, or a server started afresh).
MISSING_RUN = "MISSING"
# Prefect states after which a run will not go on by itself.
_ENDED_BADLY = frozenset({"CRASHED", "FAILED", "CANCELLED", MISSING_RUN})


@dataclass(frozen=True)
class Arrival:
    """What a `process_arrival` run is given."""

    orthanc_study_id: str
    change_seq: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"arrival:{self.orthanc_study_id}:{self.change_seq}:{self.attempt}"


def read_new_arrivals(settings: Settings, client: OrthancClient) -> int:
    """Record every StableStudy after the cursor as a pending arrival; return how many."""
    url, source = settings.resolved_database_url, settings.orthanc_aet
    with session_scope(url) as session:
        cursor = session.get(ChangeCursor, source)
        since = cursor.last_seq if cursor is not None else _first_seq(settings, client)
    found = 0
    while True:
        page = client.changes(since, limit=_PAGE)
        changes = page.get("Changes") or []
        last = int(page.get("Last", since))
        with session_scope(url) as session:
            for change in changes:
                if change.get("ChangeType") != STABLE_STUDY:
                    continue
                key = (str(change["ID"]), int(change["Seq"]))
                if session.get(StudyArrival, key) is None:
                    session.add(StudyArrival(orthanc_study_id=key[0], change_seq=key[1]))
                    found += 1
            session.merge(ChangeCursor(source=source, last_seq=max(last, since)))
        if page.get("Done", True) or not changes or last <= since:
            return found
        since = last


def _first_seq(settings: Settings, client: OrthancClient) -> int:
    """Where a watcher with no cursor starts: the beginning of the log (every study already in
    Orthanc is checked once), or its end when `arrivals_from` says `now`."""
    if settings.arrivals_from == "beginning":
        return 0
    return client.last_change_seq()


def submit_due_arrivals(settings: Settings, submit: Callable[[Arrival], str]) -> int:
    """Create runs for pending arrivals whose time has come, as many as there are free places
    (`arrivals_max_in_flight` less the runs submitted and not ended), in `arrivals_in_turn`
    order; return how many were made. Runs wait here, not in Prefect's queue, so that the
    order can still change when a new study arrives.

    `submit` creates the flow run and returns its id (the watcher's `run_deployment`).
    """
    url, now = settings.resolved_database_url, utcnow()
    with session_scope(url) as session:
        in_flight = session.exec(
            select(func.count())
            .select_from(StudyArrival)
            .where(StudyArrival.state == ArrivalState.SUBMITTED)
        ).one()
        free = settings.arrivals_max_in_flight - in_flight
        if free <= 0:
            return 0
        due = session.exec(
            select(StudyArrival)
            .where(StudyArrival.state == ArrivalState.PENDING)
            .where(col(StudyArrival.next_attempt_at) <= now)
        ).all()
    made = 0
    for row in arrivals_in_turn(list(due), free):
        arrival = Arrival(row.orthanc_study_id, row.change_seq, row.attempts + 1)
        try:
            run_id, error = submit(arrival), None
        except Exception as err:  # the API down or refusing: try again later, never drop it
            run_id, error = None, f"{type(err).__name__}: {err}"
        with session_scope(url) as session:
            current = session.get(StudyArrival, (row.orthanc_study_id, row.change_seq))
            if current is None or current.state != ArrivalState.PENDING:
                continue
            current.attempts, current.updated_at = arrival.attempt, utcnow()
            if run_id is not None:
                current.state, current.flow_run_id, current.detail = (
                    ArrivalState.SUBMITTED,
                    run_id,
                    None,
                )
                made += 1
            else:
                delay = min(_MAX_RETRY_DELAY_S, 2.0**arrival.attempt)
                current.next_attempt_at = utcnow() + timedelta(seconds=delay)
                current.detail = f"could not create its run, retry in {delay:.0f} s: {error}"[:512]
                log.warning("arrival %s: %s", row.orthanc_study_id, current.detail)
            session.add(current)
    return made


def arrivals_in_turn(due: list[StudyArrival], places: int) -> list[StudyArrival]:
    """The arrivals to submit into `places` free places: newest, oldest, second newest, second
    oldest … A study sent now takes the first free place however long the backlog (after an
    outage, a backlog first-in-first-out made the next study wait 286 s), and the oldest of the
    backlog takes the next, so the backlog drains beside what arrives."""
    newest_first = sorted(due, key=lambda r: (as_utc(r.created_at), r.change_seq), reverse=True)
    turn: list[StudyArrival] = []
    low, high = 0, len(newest_first) - 1
    while low <= high and len(turn) < places:
        turn.append(newest_first[low])
        low += 1
        if low <= high and len(turn) < places:
            turn.append(newest_first[high])
            high -= 1
    return turn


def follow_submitted(settings: Settings, run_state: Callable[[str], str | None]) -> int:
    """Put arrivals whose run crashed, failed or was cancelled back to pending (or to failed
    after `arrival_max_attempts`); return how many were put back. `run_state` gives a run's
    state type (`COMPLETED`, `CRASHED` …) or None when it cannot be read now."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        submitted = session.exec(
            select(StudyArrival).where(StudyArrival.state == ArrivalState.SUBMITTED)
        ).all()
    again = 0
    for row in submitted:
        state = run_state(row.flow_run_id or "")
        if state not in _ENDED_BADLY and state != "COMPLETED":
            continue
        with session_scope(url) as session:
            current = session.get(StudyArrival, (row.orthanc_study_id, row.change_seq))
            if current is None or current.state != ArrivalState.SUBMITTED:
                continue
            current.updated_at = utcnow()
            if state == "COMPLETED":  # it finished without marking (an older flow): done
                current.state = ArrivalState.DONE
            elif current.attempts >= settings.arrival_max_attempts:
                current.state = ArrivalState.FAILED
                current.detail = f"its run ended {state} {current.attempts} times; re-run it"
                log.error("arrival %s: %s", row.orthanc_study_id, current.detail)
            else:
                current.state, current.next_attempt_at = ArrivalState.PENDING, utcnow()
                current.detail = f"its run ended {state}; submitted again"
                again += 1
            session.add(current)
    return again


def record_uploaded_studies(
    settings: Settings, study_uids: list[str], received_at: datetime
) -> None:
    """Studies stored by an upload (STOW-RS) become pending arrivals at once, so the watcher
    hands them on as it does a C-STORE's (patient sync, the AI).

    Their instances are indexed already, so the arrival is dated when the upload began: the
    run then counts them as new. An upload's sequence number is negative (Orthanc's changes
    are positive), random, so two uploads of one study are two arrivals.
    """
    with session_scope(settings.resolved_database_url) as session:
        for study_uid in study_uids:
            study = session.get(Study, study_uid)
            if study is None:
                continue
            session.add(
                StudyArrival(
                    orthanc_study_id=orthanc_study_id(study.patient_id, study_uid),
                    change_seq=-(secrets.randbelow(2**31 - 1) + 1),
                    study_instance_uid=study_uid,
                    detail="uploaded (STOW-RS)",
                    created_at=received_at,
                    next_attempt_at=utcnow(),
                )
            )


@dataclass(frozen=True)
class ArrivalRecord:
    """What a `process_arrival` run needs to know of its arrival's row."""

    recorded_at: datetime  # when the watcher recorded it (UTC)
    attempts: int  # runs submitted so far; above 1, an earlier one failed or died


def read_arrival(
    settings: Settings, orthanc_study_id: str, change_seq: int
) -> ArrivalRecord | None:
    """The arrival's row as a run sees it; None for a run started by hand."""
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(StudyArrival, (orthanc_study_id, change_seq))
        return None if row is None else ArrivalRecord(as_utc(row.created_at), row.attempts)


def mark_arrival_done(
    settings: Settings,
    orthanc_study_id: str,
    change_seq: int,
    study_instance_uid: str | None,
    detail: str,
) -> None:
    """The flow's last step: the arrival is processed (an arrival the watcher never recorded,
    e.g. a run started by hand, gets its row now)."""
    key = (orthanc_study_id, change_seq)
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(StudyArrival, key) or StudyArrival(
            orthanc_study_id=orthanc_study_id, change_seq=change_seq
        )
        row.state, row.study_instance_uid, row.detail = (
            ArrivalState.DONE,
            study_instance_uid,
            detail,
        )
        row.updated_at = utcnow()
        session.add(row)
