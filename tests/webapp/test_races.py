"""What may be done once, or by many at once, raced on every database the product runs on:
SQLite, MariaDB with snapshot isolation (11.8's default, the stack's everywhere) and without it
(10.11's and MySQL's default). Each race ends in its documented answers, never a 500.

The app here is the real Flask app on that database, each racer a client of its own, released
together (tests/support/race.py); the gateway tests race the same paths through nginx and
gunicorn (tests/gateway/test_gateway.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pydantic import SecretStr
from pydicom.uid import generate_uid
from sqlmodel import col, func, select

from common.db import AuthSession, BreakGlassGrant, RevokedToken, User, session_scope
from common.settings import Settings
from tests.support.race import race
from tests.support.web import (
    PASSWORD,
    IndexedStudy,
    bearer,
    fragment_token,
    index_study,
    login,
    viewer_link_token,
)
from webapp import accounts, create_app
from webapp.accounts import TokenType

RACERS = 6
ROUNDS = 20  # the bar: twenty races in a row on each database


class World:
    """The app on one database, a radiologist, an admin and a clinician of our own (the MariaDB
    database is the session's: names and UIDs are new for each test) and one indexed study."""

    def __init__(self, app: Flask, url: str) -> None:
        self.app, self.url = app, url
        tag = uuid.uuid4().hex[:8]
        self.reader, self.admin, self.clinician = f"rad{tag}", f"adm{tag}", f"cli{tag}"
        self.mrn = f"RACE{tag.upper()}"
        series = generate_uid()
        self.study = IndexedStudy(self.mrn, generate_uid(), series, (generate_uid(),))
        with session_scope(url) as session:
            accounts.add_user(session, self.reader, "radiologist", PASSWORD)
            accounts.add_user(session, self.admin, "admin", PASSWORD)
            accounts.add_user(session, self.clinician, "clinician", PASSWORD)
        index_study(url, self.study)

    def statuses(self, path: str, **request: Any) -> list[int]:
        """`POST path` from RACERS clients of their own at once: their status codes, sorted."""
        return sorted(
            race(RACERS, lambda _: self.app.test_client().post(path, **request).status_code)
        )


@pytest.fixture
def world(racing_database_url: str, tmp_path: Path) -> Iterator[World]:
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=racing_database_url,
        jwt_secret=SecretStr("r" * 48),
        gateway_url="https://viewer.example.org",
        login_max_failures=1000,
        login_max_failures_per_client=1000,
    )
    app = create_app(settings)
    yield World(app, racing_database_url)
    app.extensions["neuronova"].audit.flush()


def test_racing_browsers_spend_a_viewer_link_once(world: World) -> None:
    access = login(world.app.test_client(), world.reader)["access_token"]
    for _ in range(ROUNDS):
        link = viewer_link_token(world.app.test_client(), access, world.study.study)
        answers = world.statuses("/view", json={"token": link})
        assert answers == [200] + [401] * (RACERS - 1)


def test_racing_browsers_spend_an_admin_link_once(world: World) -> None:
    access = login(world.app.test_client(), world.admin)["access_token"]
    for _ in range(ROUNDS):
        answer = world.app.test_client().post("/api/admin/prefect-link", headers=bearer(access))
        token = fragment_token(answer.get_json()["url"])
        answers = world.statuses("/prefect-login", json={"token": token})
        assert answers == [204] + [401] * (RACERS - 1)


def test_the_blocklist_spends_each_jti_once(world: World) -> None:
    for _ in range(ROUNDS):
        spend = partial(_spend, world.url, uuid.uuid4().hex)
        assert sorted(race(RACERS, spend)) == [False] * (RACERS - 1) + [True]


def _spend(url: str, jti: str, _racer: int) -> bool:
    expires = datetime.now(UTC) + timedelta(hours=1)
    return accounts.spend_once(url, jti, TokenType.VIEWER_LINK, None, expires)


def test_racing_sign_outs_of_one_session_all_succeed_and_end_it(world: World) -> None:
    for _ in range(ROUNDS // 4):
        tokens = login(world.app.test_client(), world.reader)
        body = {"refresh_token": tokens["refresh_token"]}
        headers = bearer(tokens["access_token"])
        answers = world.statuses("/api/auth/logout", headers=headers, json=body)
        # 200 for each racer that got past the token check; 401 for one that came after the
        # winner had revoked the token. Nothing else.
        assert set(answers) <= {200, 401} and 200 in answers
        assert world.app.test_client().get("/api/studies", headers=headers).status_code == 401
        with session_scope(world.url) as session:
            open_sessions = session.exec(
                select(func.count())
                .select_from(AuthSession)
                .join(User, col(User.id) == col(AuthSession.user_id))
                .where(User.username == world.reader)
                .where(col(AuthSession.revoked_at).is_(None))
            ).one()
        assert open_sessions == 0


def test_racing_refreshes_and_a_sign_out_answer_200_or_401_and_the_session_ends(
    world: World,
) -> None:
    """A refresh token is not spent by a refresh (each gives a new access token); a sign-out
    racing the refreshes ends it: a racer is served before or refused after, never a 500."""
    for _ in range(ROUNDS // 4):
        tokens = login(world.app.test_client(), world.reader)
        answers = race(RACERS, partial(_refresh_or_sign_out, world.app, tokens))
        assert answers[0] == 200 and set(answers[1:]) <= {200, 401}, answers
        after = world.app.test_client().post(
            "/api/auth/refresh", headers=bearer(tokens["refresh_token"])
        )
        assert after.status_code == 401


def _refresh_or_sign_out(app: Flask, tokens: dict[str, str], racer: int) -> int:
    """The first racer signs out (its refresh token too), the others refresh."""
    client = app.test_client()
    if racer == 0:
        body = {"refresh_token": tokens["refresh_token"]}
        headers = bearer(tokens["access_token"])
        return client.post("/api/auth/logout", headers=headers, json=body).status_code
    return client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])).status_code


def test_racing_sign_outs_at_the_data_layer_revoke_each_token_once(world: World) -> None:
    with session_scope(world.url) as session:
        user = accounts.find_user(session, world.reader)
        assert user is not None
        sid = accounts.open_session(session, user, 3600).sid
    expires = datetime.now(UTC) + timedelta(hours=1)
    jtis = [uuid.uuid4().hex, uuid.uuid4().hex]
    tokens = [
        accounts.TokenToRevoke(jtis[0], TokenType.ACCESS, expires),
        accounts.TokenToRevoke(jtis[1], TokenType.REFRESH, expires),
    ]
    race(RACERS, lambda _: accounts.sign_out(world.url, sid, user.id, tokens))
    with session_scope(world.url) as session:
        revoked = session.exec(
            select(RevokedToken.jti).where(col(RevokedToken.jti).in_(jtis))
        ).all()
        closed = session.get(AuthSession, sid)
    assert sorted(revoked) == sorted(jtis)
    assert closed is not None and closed.revoked_at is not None


def test_racing_sign_ins_of_one_user_each_get_a_session(world: World) -> None:
    credentials = {"username": world.clinician, "password": PASSWORD}
    for _ in range(3):  # each sign-in costs an argon2 check: three races of six
        assert world.statuses("/api/auth/login", json=credentials) == [200] * RACERS


def test_racing_break_glass_requests_are_each_recorded(world: World) -> None:
    with session_scope(world.url) as session:
        clinician = accounts.find_user(session, world.clinician)
    assert clinician is not None
    reason = "unconscious patient in the emergency room"
    grants = race(
        RACERS, lambda _: accounts.open_break_glass(world.url, clinician, world.mrn, reason, 60)
    )
    assert all(grant is not None for grant in grants)
    with session_scope(world.url) as session:
        rows = session.exec(
            select(BreakGlassGrant).where(BreakGlassGrant.user_id == clinician.id)
        ).all()
    assert len(rows) == RACERS and {row.patient_id for row in rows} == {world.mrn}
    unknown = race(
        RACERS, lambda _: accounts.open_break_glass(world.url, clinician, "NO-SUCH-MRN", reason, 60)
    )
    assert unknown == [None] * RACERS
