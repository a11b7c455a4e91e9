"""The NeuroNova webapp: JWT login, viewer links, and the gate nginx asks before any image leaves.

`create_app(settings)` builds it; gunicorn serves `webapp.wsgi:app` behind nginx. One blueprint
per concern: `auth` (login, refresh, logout), `links` (study list, viewer links), `patients`,
`alerts` (server-sent events when an AI result is ready), `stow` (STOW-RS uploads through the
verified ingest), `pages` (the sign-in page at `/`, the worklist, sign-out); the `gate`
(DICOMweb and WADO-URI requests answered with X-Accel-Redirect or a denial) is a plain WSGI
app in front of Flask.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
from flask import Flask, Response, jsonify
from flask_jwt_extended import JWTManager
from werkzeug.exceptions import HTTPException

from common.db import ensure_schema, get_engine
from common.errors import TransientUpstreamError
from common.settings import Settings
from common.transactions import is_write_conflict
from webapp.audit import AuditLog
from webapp.context import WebContext, deny_response
from webapp.tokens import ALGORITHM, API_AUDIENCE, ISSUER, derive_key

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; tests pass their own settings, gunicorn reads the environment."""
    settings = settings or Settings()
    secret = settings.jwt_secret_bytes()  # read once at start-up, never at import
    database_url = settings.resolved_database_url
    ensure_schema(database_url)

    app = Flask(__name__)
    app.config.update(
        JWT_SECRET_KEY=derive_key(secret, "api"),
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ENCODE_AUDIENCE=API_AUDIENCE,
        JWT_DECODE_AUDIENCE=API_AUDIENCE,
        JWT_ENCODE_ISSUER=ISSUER,
        JWT_DECODE_ISSUER=ISSUER,
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(seconds=settings.access_token_ttl_s),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(seconds=settings.refresh_token_ttl_s),
        JWT_ERROR_MESSAGE_KEY="error",
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
    )
    context = WebContext(
        settings=settings,
        database_url=database_url,
        viewer_key=derive_key(secret, "viewer"),
        audit=AuditLog(database_url),
        trusted_proxies=frozenset(settings.trusted_proxies),
        admin_key=derive_key(secret, "admin-ui"),
        web_key=derive_key(secret, "web-session"),
        csrf_key=derive_key(secret, "csrf"),
    )
    app.extensions["neuronova"] = context
    _register_jwt(JWTManager(app), context)

    from webapp import admin_ui, alerts, auth, links, pages, patients, readings, stow, viewer
    from webapp.gate import Gate, GateDispatcher
    from webapp.request_log import RequestLog

    app.register_blueprint(auth.bp)
    app.register_blueprint(links.bp)
    app.register_blueprint(readings.bp)
    app.register_blueprint(viewer.bp)
    app.register_blueprint(patients.bp)
    app.register_blueprint(alerts.bp)
    app.register_blueprint(alerts.page_bp)
    app.register_blueprint(admin_ui.bp)
    app.register_blueprint(stow.bp)
    app.register_blueprint(pages.bp)
    # The gate answers /dicom-web and /wado before Flask sees them (one request per image).
    # Outermost, the request log: one request id and its line for both.
    app.wsgi_app = RequestLog(GateDispatcher(Gate(context), app.wsgi_app))  # type: ignore[method-assign]
    app.add_url_rule("/api/health", "health", _health)
    app.before_request(_note_route)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    get_engine(database_url)  # built before the fork, reused by every worker thread
    return app


def _note_route() -> None:
    """The request's route pattern (`/api/patients/<mrn>`), for its log line: paths can carry
    MRNs, patterns cannot."""
    from flask import request

    from webapp.request_log import ROUTE_KEY

    if request.url_rule is not None:
        request.environ[ROUTE_KEY] = request.url_rule.rule


def _health() -> tuple[Response, int]:
    """The webapp answers, reaches its database, and reaches Orthanc (without which no study
    opens and no upload is stored: a webapp that cannot reach it is not healthy, 503)."""
    from sqlalchemy import text

    from webapp.context import web_context

    context = web_context()
    with get_engine(context.database_url).connect() as connection:
        connection.execute(text("SELECT 1"))
    problem = _ORTHANC_PROBE.problem(context.settings)
    if problem is not None:
        return jsonify({"status": "degraded", "orthanc": problem}), 503
    return jsonify({"status": "ok"}), 200


class _OrthancProbe:
    """Whether Orthanc answers its service account, asked at most every few seconds (health
    checks and load balancers ask often; Orthanc is asked once per interval per process)."""

    INTERVAL_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked_at = -self.INTERVAL_S
        self._problem: str | None = None

    def problem(self, settings: Settings) -> str | None:
        with self._lock:
            if time.monotonic() - self._checked_at >= self.INTERVAL_S:
                self._problem = _orthanc_problem(settings)
                self._checked_at = time.monotonic()
            return self._problem


def _orthanc_problem(settings: Settings) -> str | None:
    """None when Orthanc answers /system with our service account, else what went wrong."""
    try:
        response = httpx.get(
            f"{settings.orthanc_url.rstrip('/')}/system",
            auth=settings.orthanc_credentials(),
            timeout=3.0,
        )
    except httpx.HTTPError as err:
        return f"not reachable at {settings.orthanc_url}: {type(err).__name__}"
    if response.status_code != 200:
        return f"{settings.orthanc_url}/system answered {response.status_code}"
    return None


_ORTHANC_PROBE = _OrthancProbe()


def _http_error(err: HTTPException) -> tuple[Response, int]:
    code = err.code or 500
    return jsonify({"error": err.name}), code


def _unexpected_error(err: Exception) -> Response:
    # The details go to the log, never to the client (the gate has its own: a 403).
    if isinstance(err, TransientUpstreamError) or is_write_conflict(err):
        # The database was busy past the retries of a racing transaction (or a service we
        # depend on is down): nothing was changed, so the client may simply ask again.
        log.warning("busy, answered 503: %s", type(err).__name__, exc_info=True)
        response = deny_response(503, "busy: try again in a moment")
        response.headers["Retry-After"] = "1"
        return response
    log.exception("unhandled error")
    return deny_response(500, "internal error")


def _register_jwt(jwt: JWTManager, context: WebContext) -> None:
    """Every JWT failure is a 401 with a short, fixed message (no library detail leaks)."""
    from webapp import auth

    def unauthorized(*_args: Any) -> Response:
        return deny_response(401, "authentication required")

    jwt.unauthorized_loader(unauthorized)
    jwt.invalid_token_loader(unauthorized)
    jwt.expired_token_loader(unauthorized)
    jwt.revoked_token_loader(unauthorized)
    jwt.user_lookup_error_loader(unauthorized)
    jwt.token_verification_failed_loader(unauthorized)
    jwt.needs_fresh_token_loader(unauthorized)
    jwt.token_in_blocklist_loader(auth.token_is_revoked)
    jwt.user_lookup_loader(auth.load_user)
