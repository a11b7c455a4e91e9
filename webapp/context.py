"""What every blueprint shares: settings, keys, the audit log, and who is asking from where."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Response, current_app, g, jsonify, request
from sqlmodel import Session

from common.db import session_scope
from common.settings import Settings
from webapp.audit import AuditLog, AuditRecord

_REQUEST_ID = re.compile(r"^[0-9A-Za-z-]{8,64}$")
_CLIENT_ADDR = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    database_url: str
    viewer_key: bytes
    audit: AuditLog


def web_context() -> WebContext:
    context: WebContext = current_app.extensions["neuronova"]
    return context


@contextmanager
def db_session() -> Iterator[Session]:
    with session_scope(web_context().database_url) as session:
        yield session


def request_id() -> str:
    """nginx's $request_id when it sent a sane one, else our own; one per request."""
    if "request_id" not in g:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
    rid: str = g.request_id
    return rid


def client_addr() -> str:
    """The browser's address as nginx saw it (X-Real-IP, set by nginx, never passed through).

    gunicorn listens on loopback only, so the header can only come from our nginx.
    """
    sent = request.headers.get("X-Real-IP", "")
    if _CLIENT_ADDR.match(sent):
        return sent
    return request.remote_addr or "unknown"


def deny_response(status: int, message: str) -> Response:
    """A short JSON refusal with no detail beyond `message`, never cached."""
    response = jsonify({"error": message})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="neuronova"'
    return response


def audit(
    action: str,
    status: int,
    *,
    username: str | None = None,
    study: str | None = None,
    reason: str | None = None,
    now: bool = True,
) -> None:
    """Record one audit row for the current request (now, or in the next batch)."""
    record = AuditRecord(
        action=action,
        outcome="allowed" if status < 400 else "denied",
        status=status,
        request_id=request_id(),
        username=username,
        client_addr=client_addr(),
        study_instance_uid=study,
        reason=reason,
    )
    log = web_context().audit
    if now:
        log.record_now(record)
    else:
        log.record_soon(record)
