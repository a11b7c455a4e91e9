"""What every blueprint shares: settings, keys, the audit log, and who is asking from where."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, g, jsonify, request
from sqlmodel import Session

from common.db import session_scope
from common.settings import Settings
from webapp.audit import Action, AuditLog, AuditRecord

_REQUEST_ID = re.compile(r"^[0-9A-Za-z-]{8,64}$")
_CLIENT_ADDR = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    database_url: str
    viewer_key: bytes
    audit: AuditLog
    trusted_proxies: frozenset[str]
    admin_key: bytes  # the admin UI's links and cookies (webapp.admin_ui)
    web_key: bytes  # the signed-in browser's session cookie (webapp.pages)
    csrf_key: bytes  # the pages' CSRF tokens, one per login session (webapp.pages)


def web_context() -> WebContext:
    context: WebContext = current_app.extensions["neuronova"]
    return context


@contextmanager
def db_session() -> Iterator[Session]:
    with session_scope(web_context().database_url) as session:
        yield session


# Where handlers leave the study a request concerned (the gate, viewer links), so that the
# request's log line (webapp.request_log) names it.
STUDY_KEY = "neuronova.study_uid"


def request_id_from(environ: dict[str, Any]) -> str:
    """nginx's $request_id when it sent a sane one, else our own."""
    sent = environ.get("HTTP_X_REQUEST_ID", "")
    return sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


def client_addr_from(environ: dict[str, Any], trusted_proxies: frozenset[str]) -> str:
    """The browser's address: nginx's X-Real-IP when the request comes from a trusted proxy
    (nginx), else the peer's own address (a forged header from anyone else is ignored)."""
    peer = str(environ.get("REMOTE_ADDR") or "unknown")
    if peer not in trusted_proxies:
        return peer
    sent = environ.get("HTTP_X_REAL_IP", "")
    return sent if _CLIENT_ADDR.fullmatch(sent) else peer


def request_id() -> str:
    """This request's id (one per request, also in the audit rows)."""
    if "request_id" not in g:
        g.request_id = request_id_from(request.environ)
    rid: str = g.request_id
    return rid


def client_addr() -> str:
    return client_addr_from(request.environ, web_context().trusted_proxies)


def deny_response(status: int, message: str) -> Response:
    """A short JSON refusal with no detail beyond `message`, never cached."""
    response = jsonify({"error": message})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="neuronova"'
    return response


def audit(
    action: Action,
    status: int,
    *,
    username: str | None = None,
    study: str | None = None,
    patient: str | None = None,
    reason: str | None = None,
    now: bool = True,
) -> None:
    """Record one audit row for the current request (now, or in the next batch)."""
    if study:
        request.environ[STUDY_KEY] = study  # for the request's log line (webapp.request_log)
    record = AuditRecord(
        action=action,
        status=status,
        request_id=request_id(),
        username=username,
        client_addr=client_addr(),
        study_instance_uid=study,
        patient_id=patient,
        reason=reason,
    )
    log = web_context().audit
    if now:
        log.record_now(record)
    else:
        log.record_soon(record)
