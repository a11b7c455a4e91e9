"""`GET /api/alerts`: server-sent events telling a logged-in user that an AI result is ready
for a study they may open (event `ai-result`), and where its AI run stands as it moves on
(event `ai-state`: queued, running, failed, done, or null when no reading applies).

Served by the alerts pool (the same app in its own gunicorn, `neuronova/stack/alerts.py`), so
open streams never hold the gate's threads. Before each alert from Redis
(`tasks/inference/alerts.py`) is passed on, the user is read again with their session and token
(a user made inactive, a role changed, a session closed a second ago all count) and the alert
is checked against the policy with that record; only alerts of a known kind pass, and the
event's name is that kind. The stream ends when the access token expires (an `expired` event:
reconnect with a fresh token) or as soon as the session is closed (logout, a new password),
checked at every heartbeat too. Browsers read it with `fetch` (the token goes in the
Authorization header, never in the URL). The signed-in worklist page reads the same stream at
`/worklist/alerts` with its session cookie (EventSource), under the same checks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, stream_with_context
from flask_jwt_extended import current_user, get_jwt, jwt_required

from common.db import User, get_engine
from tasks.inference.alerts import ALERT_KINDS, subscribe_to_alerts
from webapp import accounts
from webapp.audit import Action
from webapp.context import WebContext, audit, db_session, deny_response, web_context

log = logging.getLogger(__name__)

bp = Blueprint("alerts", __name__, url_prefix="/api")
page_bp = Blueprint("page_alerts", __name__)  # the worklist page's stream, by its cookie

_POLL_S = 1.0  # the longest a new alert or a closed session waits to be noticed


class _OpenStreams:
    """Open streams per user in this pool (one process: `neuronova/stack/alerts.py`)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, username: str, limit: int) -> bool:
        with self._lock:
            if self._counts.get(username, 0) >= limit:
                return False
            self._counts[username] = self._counts.get(username, 0) + 1
            return True

    def release(self, username: str) -> None:
        with self._lock:
            left = self._counts.get(username, 0) - 1
            if left > 0:
                self._counts[username] = left
            else:
                self._counts.pop(username, None)


_OPEN = _OpenStreams()


@bp.get("/alerts")
@jwt_required()
def stream_alerts() -> Response:
    """The caller's alert stream (text/event-stream), for an API client with its access token."""
    user: User = current_user
    return _open_stream(user, get_jwt())


@page_bp.get("/worklist/alerts")
def stream_page_alerts() -> Response:
    """The same stream for the signed-in worklist page (its session cookie, webapp/pages.py):
    it ends when the login session does (sign-out ends the page's live updates)."""
    from webapp.pages import signed_in

    found = signed_in()
    if found is None:
        audit(Action.ALERTS, 401, reason="no open browser session")
        return deny_response(401, "sign in again")
    user, session = found
    claims = {
        "sid": session.sid,
        "jti": session.jti,
        "sub": session.username,
        "exp": session.expires_at.timestamp(),
    }
    return _open_stream(user, claims)


def _open_stream(user: User, claims: dict[str, Any]) -> Response:
    """Open a stream for this user under these claims (sid, jti, sub, exp), within the limits."""
    ctx = web_context()
    if not ctx.settings.resolved_redis_url:
        audit(Action.ALERTS, 503, username=user.username, reason="alerts not configured")
        return deny_response(503, "alerts are not configured")
    if not _OPEN.take(user.username, ctx.settings.alerts_streams_per_user):
        audit(Action.ALERTS, 429, username=user.username, reason="too many open streams")
        response = deny_response(429, "too many open alert streams; close one")
        response.headers["Retry-After"] = "30"
        return response
    try:
        pubsub = subscribe_to_alerts(ctx.settings)
    except redis.RedisError:
        _OPEN.release(user.username)
        log.warning("alerts: Redis unreachable")
        audit(Action.ALERTS, 503, username=user.username, reason="redis unreachable")
        return deny_response(503, "alerts are unavailable; try again shortly")
    audit(Action.ALERTS, 200, username=user.username)
    events = _events(ctx, claims, pubsub)
    response = Response(stream_with_context(events), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    # Released when the server closes the answer, whether or not the stream ever started.
    response.call_on_close(lambda: _OPEN.release(user.username))
    return response


def _events(ctx: WebContext, claims: dict[str, Any], pubsub: redis.client.PubSub) -> Iterator[str]:
    heartbeat_s = ctx.settings.alerts_heartbeat_s
    expires_at = float(claims["exp"])
    try:
        yield "retry: 5000\n: connected\n\n"
        last_beat = time.monotonic()
        while time.time() < expires_at:
            message = pubsub.get_message(timeout=min(_POLL_S, heartbeat_s))
            if message is not None and message.get("type") == "message":
                alert = _parse(message.get("data"))
                if alert is not None:
                    now = _current_user(ctx, claims)
                    if now is None:
                        yield 'event: closed\ndata: {"reason": "session closed"}\n\n'
                        return
                    if _may_see(now, alert):
                        yield _event(alert)
            if time.monotonic() - last_beat >= heartbeat_s:
                if not _session_open(ctx, claims):
                    yield 'event: closed\ndata: {"reason": "session closed"}\n\n'
                    return
                yield ": keep-alive\n\n"
                last_beat = time.monotonic()
        yield 'event: expired\ndata: {"reason": "token expired: reconnect"}\n\n'
    except redis.RedisError:
        log.warning("alerts: Redis connection lost; the client reconnects")
    finally:
        pubsub.close()


def _parse(data: object) -> dict[str, Any] | None:
    """The alert, when it is one: a known kind about a study."""
    try:
        alert = json.loads(data if isinstance(data, bytes | str) else b"")
    except ValueError:
        return None
    if not isinstance(alert, dict) or not isinstance(alert.get("study_instance_uid"), str):
        return None
    if alert.get("kind") not in ALERT_KINDS:
        log.warning("alerts: dropped an alert of unknown kind")
        return None
    return alert


def _may_see(user: User, alert: dict[str, Any]) -> bool:
    with db_session() as session:
        return accounts.may_open_study(session, user, alert["study_instance_uid"])


def _current_user(ctx: WebContext, claims: dict[str, Any]) -> User | None:
    """The user as the database has them now, while their session and token are live (and
    they are active); None otherwise."""
    with get_engine(ctx.database_url).connect() as connection:
        return accounts.api_token_user(
            connection, sid=claims["sid"], jti=claims["jti"], username=claims["sub"]
        )


def _session_open(ctx: WebContext, claims: dict[str, Any]) -> bool:
    return _current_user(ctx, claims) is not None


def _event(alert: dict[str, Any]) -> str:
    # The kind is one of ALERT_KINDS (checked in _parse): no line break can ride in on it.
    return f"event: {alert['kind']}\ndata: {json.dumps(alert)}\n\n"
