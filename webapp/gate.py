"""The gate: nginx asks here before any DICOMweb or WADO-URI request reaches Orthanc.

For each request: a viewer token in `Authorization: Bearer` (as OHIF sends it) that verifies,
whose session is still open; a request line that parses into allow-listed identifiers inside
the token's study; series and instances that the archive index places in that study. Then an
audit row and `X-Accel-Redirect` to nginx's `internal;` location, built from the parsed values.
Everything else is a 401 or 403 with a short reason, and anything unexpected is a 403 too:
the gate never lets a doubt through and never shows an error's details.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flask import Blueprint, Response, request
from sqlmodel import select

from common.db import Instance, Series, get_engine
from webapp import accounts
from webapp.context import audit, db_session, deny_response, web_context
from webapp.gate_paths import (
    INTERNAL_PREFIX,
    GateDenied,
    GateRequest,
    parse_dicomweb,
    parse_wado_uri,
    split_raw_uri,
)
from webapp.tokens import MAX_TOKEN_LENGTH, TokenRejected, verify_viewer_token

log = logging.getLogger(__name__)

bp = Blueprint("gate", __name__)
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ROUTE_OPTIONS = {"methods": _ANY_METHOD, "merge_slashes": False, "strict_slashes": False}
_ORTHANC_ID_CHARS = frozenset("0123456789abcdef-")


class _PositiveCache:
    """Where a series or instance lives never changes once indexed, so hits are kept.

    Misses are not: an instance indexed a second later must be found then.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._data: dict[str, tuple[str, ...]] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[str, ...] | None:
        return self._data.get(key)

    def put(self, key: str, value: tuple[str, ...]) -> None:
        with self._lock:
            if len(self._data) >= self._max:
                self._data.clear()
            self._data[key] = value


_series_cache = _PositiveCache()
_instance_cache = _PositiveCache()


@bp.route("/dicom-web", defaults={"_rest": ""}, **_ROUTE_OPTIONS)
@bp.route("/dicom-web/<path:_rest>", **_ROUTE_OPTIONS)
def dicomweb(_rest: str) -> Response:
    return _gate("dicomweb", parse_dicomweb)


@bp.route("/wado", **_ROUTE_OPTIONS)
def wado_uri() -> Response:
    return _gate("wado-uri", parse_wado_uri)


def _gate(kind: str, parse: Callable[[str, str, str], GateRequest]) -> Response:
    username: str | None = None
    study: str | None = None
    try:
        if request.method not in ("GET", "HEAD"):
            raise GateDenied(403, "only reads pass the gate")
        claims = verify_viewer_token(web_context().viewer_key, _bearer_token())
        username, study = claims.username, claims.study_instance_uid
        path, query = split_raw_uri(_raw_uri())
        target = parse(path, query, claims.study_instance_uid)
        kind = target.kind
        with get_engine(web_context().database_url).connect() as connection:
            if not accounts.viewer_token_live(connection, claims.sid, claims.jti):
                raise TokenRejected("session ended or token revoked")
        internal_uri = _locate(target)
    except TokenRejected as err:
        audit(kind, 401, username=username, study=study, reason=err.reason)
        return deny_response(401, "authentication required")
    except GateDenied as err:
        audit(kind, err.status, username=username, study=study, reason=err.reason)
        return deny_response(err.status, "not allowed" if err.status == 403 else "not found")
    except Exception:
        log.exception("gate: unexpected error, denying")
        audit(kind, 403, username=username, study=study, reason="internal error")
        return deny_response(403, "not allowed")
    audit(kind, 200, username=username, study=study, now=False)
    return _accel(internal_uri)


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    if len(header) > MAX_TOKEN_LENGTH + 16:
        raise TokenRejected("authorization header oversized")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("no bearer token")
    return token.strip()


def _raw_uri() -> str:
    """The request line's target exactly as sent (gunicorn: RAW_URI; werkzeug: REQUEST_URI)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not isinstance(raw, str):
        raise GateDenied(403, "request URI unavailable")
    return raw


def _locate(target: GateRequest) -> str:
    """Check that the series and instance belong to the study; return the internal URI."""
    if target.instance is not None:
        series, study, orthanc_id = _instance_location(target.instance)
        if study != target.study or (target.series is not None and series != target.series):
            raise GateDenied(403, "instance not in the token's study")
        if target.kind == "wado-uri":
            if not orthanc_id or not set(orthanc_id) <= _ORTHANC_ID_CHARS:
                raise GateDenied(403, "instance has no archive ID")
            return f"{INTERNAL_PREFIX}/instances/{orthanc_id}/file"
    elif target.series is not None and _series_study(target.series) != target.study:
        raise GateDenied(403, "series not in the token's study")
    return target.internal_uri()


def _instance_location(sop_uid: str) -> tuple[str, ...]:
    cached = _instance_cache.get(sop_uid)
    if cached is not None:
        return cached
    query = select(
        Instance.series_instance_uid, Instance.study_instance_uid, Instance.orthanc_id
    ).where(Instance.sop_instance_uid == sop_uid)
    with db_session() as session:
        row = session.exec(query).first()
    if row is None:
        raise GateDenied(403, "instance not in the archive index")
    location = (row[0], row[1], row[2])
    _instance_cache.put(sop_uid, location)
    return location


def _series_study(series_uid: str) -> str:
    cached = _series_cache.get(series_uid)
    if cached is not None:
        return cached[0]
    with db_session() as session:
        study = session.exec(
            select(Series.study_instance_uid).where(Series.series_instance_uid == series_uid)
        ).first()
    if study is None:
        raise GateDenied(403, "series not in the archive index")
    _series_cache.put(series_uid, (study,))
    return study


def _accel(internal_uri: str) -> Response:
    """An empty answer that tells nginx where to fetch the bytes.

    No Content-Type of ours: nginx would otherwise keep it over Orthanc's (DICOM, JSON).
    """
    response = Response(status=200)
    response.headers["X-Accel-Redirect"] = internal_uri
    response.headers["Cache-Control"] = "private, no-store"
    del response.headers["Content-Type"]
    return response
