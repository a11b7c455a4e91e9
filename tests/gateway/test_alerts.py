"""AI-result alerts through the real gateway: nginx → the alerts pool (gunicorn) ← Redis (the
machine's, on loopback). A clinician allowed the study hears it; one who is not, does not; a
stream closes once its session does."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from common.db import session_scope
from tasks.inference.alerts import AI_RESULT, AlertPublisher
from tests.support.alerts import Listener
from tests.support.viewing import PASSWORD, Viewing
from webapp import accounts

pytestmark = pytest.mark.integration


def _access(viewing: Viewing, username: str) -> str:
    with viewing.client() as client:
        return viewing.login(client, username)["access_token"]


@pytest.fixture(scope="module")
def dora(viewing: Viewing) -> str:
    """A clinician with nobody on her care list."""
    with session_scope(viewing.settings.resolved_database_url) as session:
        if accounts.find_user(session, "dora") is None:
            accounts.add_user(session, "dora", "clinician", PASSWORD)
    return "dora"


def _publish(viewing: Viewing, study: str) -> int:
    settings = viewing.settings
    assert settings.resolved_redis_url
    with AlertPublisher.from_settings(settings) as publisher:
        return publisher.publish(AI_RESULT, study, viewing.patient_a, {"lesion_count": 2})


def test_an_ai_result_reaches_those_allowed_the_study_only(viewing: Viewing, dora: str) -> None:
    listeners = {
        name: Listener(viewing.base, _access(viewing, name)) for name in ("cara", "rex", dora)
    }
    try:
        assert all(listener.status == 200 for listener in listeners.values())
        heard_by = _publish(viewing, viewing.study_a)
        assert heard_by >= 3  # every stream is subscribed; the policy filters afterwards
        for name in ("cara", "rex"):
            alert = listeners[name].wait_for(AI_RESULT)
            assert alert is not None, f"{name} was not told"
            assert alert["study_instance_uid"] == viewing.study_a and alert["lesion_count"] == 2
        time.sleep(1.0)  # dora's stream has had every chance to receive it
        assert all(kind != AI_RESULT for kind, _ in listeners[dora].events)
    finally:
        for listener in listeners.values():
            listener.close()


def test_a_stream_closes_when_its_session_does(viewing: Viewing) -> None:
    access = _access(viewing, "cara")
    listener = Listener(viewing.base, access)
    try:
        assert listener.status == 200
        out = httpx.post(
            f"{viewing.base}/api/auth/logout", headers={"Authorization": f"Bearer {access}"}
        )
        assert out.status_code == 200
        assert listener.wait_for("closed", timeout_s=10) is not None
        assert listener.ended.wait(5)
        _publish(viewing, viewing.study_a)
        time.sleep(0.5)
        assert all(kind != AI_RESULT for kind, _ in listener.events)
    finally:
        listener.close()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic Y2FyYTpwdw=="}],
    ids=["none", "garbage", "basic"],
)
def test_no_stream_without_a_valid_token(viewing: Viewing, headers: dict[str, str]) -> None:
    response = httpx.get(f"{viewing.base}/api/alerts", headers=headers, timeout=10)
    assert response.status_code == 401
    assert "text/event-stream" not in response.headers.get("content-type", "")


def test_an_alert_after_a_demotion_or_a_crafted_kind_is_not_delivered(viewing: Viewing) -> None:
    """The user and the policy are read again for each alert: a clinician taken off the care
    list, or a user made inactive, a second ago hears nothing; an alert of an unknown kind (one
    carrying a line break for the event stream) is dropped."""
    url = viewing.settings.resolved_database_url
    with session_scope(url) as session:
        for name in ("erin", "fritz"):
            if accounts.find_user(session, name) is None:
                accounts.add_user(session, name, "clinician", PASSWORD)
    with session_scope(url) as session:
        for name in ("erin", "fritz"):
            accounts.grant_patient(session, name, viewing.patient_a)
    erin = Listener(viewing.base, _access(viewing, "erin"))
    fritz = Listener(viewing.base, _access(viewing, "fritz"))
    try:
        _publish(viewing, viewing.study_a)
        assert erin.wait_for(AI_RESULT) is not None and fritz.wait_for(AI_RESULT) is not None
        with session_scope(url) as session:
            accounts.revoke_patient(session, "erin", viewing.patient_a)
            user = accounts.find_user(session, "fritz")
            assert user is not None
            user.active = False
            session.add(user)
        settings = viewing.settings
        assert settings.resolved_redis_url
        with AlertPublisher.from_settings(settings) as publisher:
            crafted = {
                "kind": "ai-result\r\nevent: forged",
                "study_instance_uid": viewing.study_a,
            }
            publisher._redis.publish(settings.alerts_channel, json.dumps(crafted))
        _publish(viewing, viewing.study_a)
        assert fritz.wait_for("closed", timeout_s=10) is not None  # inactive: the stream ends
        time.sleep(1.0)
        for listener in (erin, fritz):
            assert [kind for kind, _ in listener.events].count(AI_RESULT) == 1
            assert all("forged" not in kind for kind, _ in listener.events)
    finally:
        erin.close()
        fritz.close()
        with session_scope(url) as session:
            user = accounts.find_user(session, "fritz")
            assert user is not None
            user.active = True
            session.add(user)


def test_only_known_kinds_are_published() -> None:
    publisher = AlertPublisher("redis://127.0.0.1:1/0", "unused")
    with pytest.raises(ValueError, match="unknown alert kind"):
        publisher.publish("ai-result\r\nevent: x", "1.2.3", "P", {})


def test_one_user_holds_a_bounded_number_of_streams(viewing: Viewing) -> None:
    with session_scope(viewing.settings.resolved_database_url) as session:
        if accounts.find_user(session, "gina") is None:  # a user with no other stream open
            accounts.add_user(session, "gina", "radiologist", PASSWORD)
    access = _access(viewing, "gina")
    cap = viewing.settings.alerts_streams_per_user
    listeners = [Listener(viewing.base, access) for _ in range(cap)]
    try:
        assert all(listener.status == 200 for listener in listeners)
        extra = httpx.get(
            f"{viewing.base}/api/alerts", headers={"Authorization": f"Bearer {access}"}, timeout=10
        )
        assert extra.status_code == 429 and extra.headers["retry-after"] == "30"
        # Another user is not held to gina's streams.
        other = Listener(viewing.base, _access(viewing, "cara"))
        assert other.status == 200
        other.close()
    finally:
        for listener in listeners:
            listener.close()
