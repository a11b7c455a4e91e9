"""The retry of a transaction that lost a race: what counts as one on each database, that the
work runs again from the start in a fresh transaction, and that a conflict without end is a
transient error (a 503 in the webapp), never a loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pymysql
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session

from common.db import ensure_schema, get_engine
from common.errors import TransientUpstreamError
from common.transactions import in_transaction, is_write_conflict


def _mysql(code: int, message: str) -> OperationalError:
    return OperationalError("UPDATE …", {}, pymysql.err.OperationalError(code, message))


@pytest.mark.parametrize(
    ("error", "conflict"),
    [
        (_mysql(1020, "Record has changed since last read in table 't'"), True),
        (_mysql(1213, "Deadlock found when trying to get lock"), True),
        (OperationalError("INSERT …", {}, sqlite3.OperationalError("database is locked")), True),
        (_mysql(2003, "Can't connect to MySQL server"), False),
        (
            IntegrityError("INSERT …", {}, pymysql.err.IntegrityError(1062, "Duplicate entry")),
            False,
        ),
        (ValueError("not a database error"), False),
    ],
)
def test_what_counts_as_a_lost_race(error: Exception, conflict: bool) -> None:
    assert is_write_conflict(error) is conflict


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tx.db'}"
    ensure_schema(url)
    return url


def test_a_lost_race_runs_the_work_again_in_a_fresh_transaction(url: str) -> None:
    runs: list[int] = []

    def work(session: Session) -> int:
        session.execute(
            text(
                "INSERT INTO login_failures (username, client_addr, at) "
                "VALUES ('x', 'y', CURRENT_TIMESTAMP)"
            )
        )
        runs.append(len(runs))
        if len(runs) < 3:
            raise _mysql(1020, "Record has changed since last read")
        return len(runs)

    assert in_transaction(url, work) == 3
    with get_engine(url).connect() as connection:
        # The two runs that lost were rolled back: one row, the third run's.
        assert connection.execute(text("SELECT COUNT(*) FROM login_failures")).scalar() == 1


def test_a_duplicate_is_run_again_only_when_asked(url: str) -> None:
    duplicate = IntegrityError("INSERT …", {}, pymysql.err.IntegrityError(1062, "Duplicate"))
    calls: list[None] = []

    def work(_: Session) -> str:
        calls.append(None)
        if len(calls) == 1:
            raise duplicate
        return "found the winner's row"

    with pytest.raises(IntegrityError):
        in_transaction(url, work)
    calls.clear()
    assert in_transaction(url, work, also_retry=(IntegrityError,)) == "found the winner's row"


def test_a_race_lost_every_time_is_a_transient_error(url: str) -> None:
    def work(_: Session) -> None:
        raise _mysql(1213, "Deadlock found when trying to get lock")

    with pytest.raises(TransientUpstreamError, match="conflict"):
        in_transaction(url, work, attempts=3)


def test_the_stacks_mariadb_checks_snapshots_as_mariadb_11_8_does(mariadb_url: str) -> None:
    with get_engine(mariadb_url).connect() as connection:
        version = str(connection.execute(text("SELECT VERSION()")).scalar())
        try:
            on = connection.execute(text("SELECT @@GLOBAL.innodb_snapshot_isolation")).scalar()
        except OperationalError:
            pytest.skip(f"{version} has no innodb_snapshot_isolation")
    assert on == 1, version
