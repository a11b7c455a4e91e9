"""The order arrivals get their runs in: a backlog (an outage's worth of studies) never queues
what a modality sends now behind it, and still drains beside it; the runs in flight are bounded,
so that the order can still change while the backlog waits (in the database, not in Prefect)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from common.db import ArrivalState, StudyArrival, ensure_schema, session_scope, utcnow
from common.settings import Settings
from tasks.archive.arrivals import (
    MISSING_RUN,
    Arrival,
    arrivals_in_turn,
    follow_submitted,
    submit_due_arrivals,
)

BACKLOG = 30
IN_FLIGHT = 4


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'arrivals.db'}",
        arrivals_max_in_flight=IN_FLIGHT,
    )
    ensure_schema(settings.resolved_database_url)
    return settings


def _record(settings: Settings, seq: int, minutes_ago: float) -> None:
    with session_scope(settings.resolved_database_url) as session:
        at = utcnow() - timedelta(minutes=minutes_ago)
        session.add(StudyArrival(orthanc_study_id=f"study-{seq}", change_seq=seq, created_at=at))


def _finish(settings: Settings, seq: int) -> None:
    """The run of that arrival completed (the flow marks its arrival done)."""
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(StudyArrival, (f"study-{seq}", seq))
        assert row is not None and row.state == ArrivalState.SUBMITTED
        row.state = ArrivalState.DONE
        session.add(row)


def _in_state(settings: Settings, state: ArrivalState) -> list[int]:
    with session_scope(settings.resolved_database_url) as session:
        return sorted(
            session.exec(
                select(StudyArrival.change_seq).where(col(StudyArrival.state) == state)
            ).all()
        )


def test_a_new_study_is_handed_on_before_a_backlog_of_30_is_drained(settings: Settings) -> None:
    for seq in range(1, BACKLOG + 1):  # the Prefect server was down for half an hour
        _record(settings, seq, minutes_ago=31 - seq)
    handed_on: list[int] = []

    def submit(arrival: Arrival) -> str:
        handed_on.append(arrival.change_seq)
        return f"run-{arrival.change_seq}"

    assert submit_due_arrivals(settings, submit) == IN_FLIGHT
    # Newest and oldest in turn: the backlog drains from its old end too.
    assert handed_on == [30, 1, 29, 2]
    assert submit_due_arrivals(settings, submit) == 0  # no free place: nothing more queued

    _record(settings, BACKLOG + 1, minutes_ago=0)  # a modality sends a study now
    _finish(settings, 30)
    assert submit_due_arrivals(settings, submit) == 1
    assert handed_on[-1] == BACKLOG + 1, handed_on
    waiting = _in_state(settings, ArrivalState.PENDING)
    assert len(waiting) == BACKLOG - IN_FLIGHT, "the new study went first, the backlog waits"

    # The backlog drains to the end, a place at a time, nothing left behind or run twice.
    while pending := _in_state(settings, ArrivalState.PENDING):
        _finish(settings, _in_state(settings, ArrivalState.SUBMITTED)[0])
        assert submit_due_arrivals(settings, submit) >= 1, pending
    for seq in _in_state(settings, ArrivalState.SUBMITTED):
        _finish(settings, seq)
    assert sorted(handed_on) == list(range(1, BACKLOG + 2))
    assert _in_state(settings, ArrivalState.DONE) == list(range(1, BACKLOG + 2))


@pytest.mark.parametrize(
    ("due", "places", "turn"),
    [
        ([1, 2, 3, 4, 5], 1, [5]),
        ([1, 2, 3, 4, 5], 2, [5, 1]),
        ([1, 2, 3, 4, 5], 4, [5, 1, 4, 2]),
        ([1, 2, 3], 10, [3, 1, 2]),
        ([7], 3, [7]),
        ([], 3, []),
    ],
)
def test_arrivals_take_their_turn_newest_then_oldest(
    due: list[int], places: int, turn: list[int]
) -> None:
    now = utcnow()
    rows = [
        StudyArrival(
            orthanc_study_id=f"s{n}", change_seq=n, created_at=now - timedelta(minutes=100 - n)
        )
        for n in due
    ]
    assert [r.change_seq for r in arrivals_in_turn(rows, places)] == turn


def test_an_upload_is_ordered_by_when_it_arrived_not_by_its_sequence_number(
    settings: Settings,
) -> None:
    """STOW-RS arrivals carry negative random sequence numbers: their time decides."""
    _record(settings, 5, minutes_ago=10)
    _record(settings, -123456, minutes_ago=0)  # an upload just now
    handed_on: list[int] = []

    def submit(arrival: Arrival) -> str:
        handed_on.append(arrival.change_seq)
        return "run"

    one_place = settings.model_copy(update={"arrivals_max_in_flight": 1})
    submit_due_arrivals(one_place, submit)
    assert handed_on == [-123456]


def test_a_run_the_server_no_longer_has_frees_its_place(settings: Settings) -> None:
    _record(settings, 1, minutes_ago=5)
    assert submit_due_arrivals(settings, lambda a: "deleted-run") == 1
    assert follow_submitted(settings, lambda run_id: MISSING_RUN) == 1
    assert _in_state(settings, ArrivalState.PENDING) == [1]  # submitted again next pass
