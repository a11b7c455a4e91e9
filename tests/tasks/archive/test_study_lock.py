"""The per-study lock on the real databases: one holder at a time, a second waits and then
takes it, a holder that died is taken over once its lease ran out, a live one is renewed."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from common.db import StudyLock, ensure_schema, session_scope, utcnow
from tasks.archive.study_lock import StudyBusy, _take, study_lock
from tests.support.race import race


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'locks.db'}"
        ensure_schema(url)
        return url
    url: str = request.getfixturevalue("mariadb_url")
    return url


def test_a_second_run_waits_for_the_first(database_url: str) -> None:
    order: list[str] = []
    first_holds = threading.Event()

    def first() -> None:
        with study_lock(database_url, "study-a", lease_s=30, wait_s=10):
            first_holds.set()
            order.append("first in")
            time.sleep(1.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert first_holds.wait(10)
    with study_lock(database_url, "study-a", lease_s=30, wait_s=10):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    with study_lock(database_url, "study-b", lease_s=30, wait_s=0):
        pass  # another study was never held up


def test_a_live_holder_is_not_taken_over(database_url: str) -> None:
    with study_lock(database_url, "study-c", lease_s=30, wait_s=1):
        with pytest.raises(StudyBusy, match="held by another run"):
            with study_lock(database_url, "study-c", lease_s=30, wait_s=1.5):
                pass


def test_a_holder_that_died_is_taken_over_once_its_lease_ran_out(database_url: str) -> None:
    with session_scope(database_url) as session:
        session.add(
            StudyLock(
                orthanc_study_id="study-d",
                holder="killed-worker:0",
                expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    with study_lock(database_url, "study-d", lease_s=30, wait_s=0) as holder:
        with session_scope(database_url) as session:
            row = session.get(StudyLock, "study-d")
            assert row is not None and row.holder == holder
    with session_scope(database_url) as session:
        assert session.get(StudyLock, "study-d") is None  # released


def test_the_lease_is_renewed_while_the_holder_lives(database_url: str) -> None:
    with study_lock(database_url, "study-e", lease_s=1.5, wait_s=0):
        time.sleep(3)  # twice the lease: without renewal it would have run out
        with pytest.raises(StudyBusy):
            with study_lock(database_url, "study-e", lease_s=1.5, wait_s=0.5):
                pass


def test_racing_runs_take_a_free_or_an_expired_lease_once(racing_database_url: str) -> None:
    url = racing_database_url
    for round_ in range(20):
        study = f"race-{uuid.uuid4().hex[:12]}"
        if round_ % 2:  # every other round, a lease left by a holder that died
            with session_scope(url) as session:
                expired = utcnow() - timedelta(seconds=1)
                session.add(StudyLock(orthanc_study_id=study, holder="dead:0", expires_at=expired))
        taken = race(6, lambda racer, study=study: _take(url, study, f"racer:{racer}", 30))
        assert sorted(taken) == [False] * 5 + [True]
        with session_scope(url) as session:
            row = session.get(StudyLock, study)
        assert row is not None and row.holder == f"racer:{taken.index(True)}"
