"""One run at a time per study: a lease in the database, renewed while its holder lives.

Two arrivals of one study can be due together (a late series during the first's run, the
study stable again after the check's own swaps, a re-run after a crash beside a newer
arrival). Two checks of one study would swap the same instances at once: nothing is lost (a
swap keeps its backup), but one of them fails its read-back and the arrival runs again. So
`process_arrival` holds the study's lock: the second run waits for the first.

The lock is a row (`study_locks`) whose `expires_at` the holder pushes forward every third of
the lease from a thread. A holder that dies (a worker killed) stops renewing and the lease runs
out: with the lease equal to NEURONOVA_FLOW_CRASHED_AFTER_S, the study is free by the time
its run is marked Crashed and the watcher submits it again. Taking the lock is two atomic
statements (insert; else update where expired), so two runs racing for it cannot both win.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from common.db import StudyLock, session_scope, utcnow
from common.errors import NeuroNovaError

log = logging.getLogger(__name__)

_POLL_S = 1.0


class StudyBusy(NeuroNovaError):
    """Another run held the study for longer than this one would wait (the run fails and the
    arrival watcher submits it again)."""


@contextmanager
def study_lock(
    database_url: str, orthanc_study_id: str, *, lease_s: float, wait_s: float, who: str = ""
) -> Iterator[str]:
    """Hold the study for the block; yields the holder's name. Waits up to `wait_s` for a
    live holder, takes over an expired one."""
    holder = f"{(who or socket.gethostname())[:48]}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait_s
    waited = False
    while not _take(database_url, orthanc_study_id, holder, lease_s):
        if time.monotonic() > deadline:
            raise StudyBusy(
                f"study {orthanc_study_id} was held by another run for over {wait_s:.0f} s; "
                "this run fails and is submitted again"
            )
        if not waited:
            log.info("study %s is being processed by another run: waiting", orthanc_study_id)
            waited = True
        time.sleep(_POLL_S)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew_until,
        args=(stop, database_url, orthanc_study_id, holder, lease_s),
        name=f"study-lock-{orthanc_study_id[:8]}",
        daemon=True,
    )
    renewer.start()
    try:
        yield holder
    finally:
        stop.set()
        renewer.join(timeout=10)
        with session_scope(database_url) as session:
            session.execute(
                delete(StudyLock).where(
                    col(StudyLock.orthanc_study_id) == orthanc_study_id,
                    col(StudyLock.holder) == holder,
                )
            )


def _take(database_url: str, orthanc_study_id: str, holder: str, lease_s: float) -> bool:
    expires_at = utcnow() + timedelta(seconds=lease_s)
    try:
        with session_scope(database_url) as session:
            session.add(
                StudyLock(orthanc_study_id=orthanc_study_id, holder=holder, expires_at=expires_at)
            )
        return True
    except IntegrityError:
        pass  # held, or left by a holder that died: take it only once its lease ran out
    with session_scope(database_url) as session:
        taken = session.execute(
            update(StudyLock)
            .where(
                col(StudyLock.orthanc_study_id) == orthanc_study_id,
                col(StudyLock.expires_at) < utcnow(),
            )
            .values(holder=holder, expires_at=expires_at)
        )
        return bool(taken.rowcount == 1)  # type: ignore[attr-defined]


def _renew_until(
    stop: threading.Event, database_url: str, orthanc_study_id: str, holder: str, lease_s: float
) -> None:
    while not stop.wait(lease_s / 3):
        try:
            with session_scope(database_url) as session:
                renewed = session.execute(
                    update(StudyLock)
                    .where(
                        col(StudyLock.orthanc_study_id) == orthanc_study_id,
                        col(StudyLock.holder) == holder,
                    )
                    .values(expires_at=utcnow() + timedelta(seconds=lease_s))
                )
            if renewed.rowcount != 1:  # type: ignore[attr-defined]
                log.error(
                    "the lock of study %s was taken over (this run stalled past its lease)",
                    orthanc_study_id,
                )
                return
        except Exception:
            log.warning("could not renew the lock of study %s", orthanc_study_id, exc_info=True)
