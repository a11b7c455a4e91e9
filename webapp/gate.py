"""The gate: nginx asks here before any DICOMweb or WADO-URI request reaches Orthanc.

For each request: a viewer token in `Authorization: Bearer` (as OHIF sends it) that verifies,
sent with the cookie of the browser it was issued to (webapp/viewer.py), whose session is still
open; a request line that parses into allow-listed identifiers inside
the token's study; series and instances that the archive index places in that study. Then an
audit row and `X-Accel-Redirect` to nginx's `internal;` location, built from the parsed values.
Everything else is a 401 or 403 with a short reason, and anything unexpected is a 403 too:
the gate never lets a doubt through and never shows an error's details.

Some answers are the gate's own rather than an `X-Accel-Redirect`: searches and metadata, which
Orthanc answers by StudyInstanceUID alone and the gate narrows to what the index places in the
study (`webapp.dicom_json`); WADO-RS frames, which Orthanc's DICOMweb plugin cannot label for
HTJ2K; whole series and studies (streamed, only the index's instances of the study); and
instances or frames asked for in explicit VR little endian, decoded from the stored HTJ2K
(`webapp.retrieve`). An instance as stored, and WADO-URI (what OHIF reads), still go through
nginx.

It is a plain WSGI app in front of Flask (see `GateDispatcher`): a viewer makes one request per
image, and Flask's request machinery cost as much as the gate's own work.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

from sqlmodel import select
from werkzeug.http import parse_cookie

from common.db import Instance, Series, Study, get_engine, session_scope
from common.errors import PermanentUpstreamError, TransientUpstreamError
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.htj2k import HTJ2K_SYNTAXES
from webapp import accounts
from webapp.audit import AuditRecord
from webapp.context import STUDY_KEY, WebContext, client_addr_from, request_id_from
from webapp.dicom_json import StudyMembers, keep_study_members
from webapp.gate_paths import (
    DICOMWEB_ROOT,
    INTERNAL_PREFIX,
    WADO_URI_ROOT,
    GateDenied,
    GateKind,
    GateRequest,
    parse_request,
    split_raw_uri,
)
from webapp.retrieve import (
    DICOM,
    OCTET_STREAM,
    Multipart,
    NotAcceptable,
    answer_syntax,
    explicit_le_frames,
    explicit_le_instance,
)
from webapp.tokens import MAX_TOKEN_LENGTH, TokenRejected, bound_to, verify_viewer_token
from webapp.viewer import browser_cookie_name

log = logging.getLogger(__name__)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]
# status, headers, body (bytes, or pieces streamed as they are made: series and studies)
_Answer = tuple[int, list[tuple[str, str]], bytes | Iterable[bytes]]

_ORTHANC_ID_CHARS = frozenset("0123456789abcdef-")
_STATUS_LINES = {
    200: "200 OK",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    406: "406 Not Acceptable",
    502: "502 Bad Gateway",
}
# Small JSON answers the gate reads from Orthanc and narrows to the index's study.
_INDEX_FILTERED = frozenset(
    {GateKind.QIDO_STUDIES, GateKind.QIDO_SERIES, GateKind.QIDO_INSTANCES, GateKind.METADATA}
)
_DENIAL_MESSAGES = {403: "not allowed", 404: "not found", 502: "archive unavailable"}
_RETRIEVALS = frozenset({GateKind.RETRIEVE_STUDY, GateKind.RETRIEVE_SERIES})
# Instances of a series or study fetched from Orthanc ahead of the one being sent.
RETRIEVE_PREFETCH = 4


def is_gate_path(path_info: str) -> bool:
    """Whether nginx sent this request to the gate (decoded path, as WSGI gives it)."""
    return path_info in (DICOMWEB_ROOT, WADO_URI_ROOT) or path_info.startswith(DICOMWEB_ROOT + "/")


class GateDispatcher:
    """WSGI: gate paths to the gate, everything else to the Flask app."""

    def __init__(self, gate: Gate, flask_app: WsgiApp) -> None:
        self.gate = gate
        self.flask_app = flask_app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if is_gate_path(path) and not is_stow(environ.get("REQUEST_METHOD", ""), path):
            return self.gate(environ, start_response)
        return self.flask_app(environ, start_response)


def is_stow(method: str, path_info: str) -> bool:
    """An upload (STOW-RS), which Flask's `webapp.stow` takes: never a read for the gate."""
    return method == "POST" and path_info == DICOMWEB_ROOT + "/studies"


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


class Gate:
    """The gate as a WSGI app (GET and HEAD only; everything else is refused)."""

    def __init__(self, context: WebContext) -> None:
        self.context = context
        self._series = _PositiveCache()
        self._instances = _PositiveCache()
        # The answers the gate builds itself (frames, searches, metadata); one quick retry, the
        # viewer is waiting.
        self._orthanc = OrthancClient.from_settings(context.settings, request_retries=1)
        self._cookie = browser_cookie_name(context.settings)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        status, headers, body = self.answer(environ)
        start_response(_STATUS_LINES[status], headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            close = getattr(body, "close", None)
            if close is not None:
                close()  # a stream not started: nothing fetched
            return []
        return [body] if isinstance(body, bytes) else body

    def answer(self, environ: Environ) -> _Answer:
        """The status, headers and body for one request, with its audit row recorded."""
        path_info = environ.get("PATH_INFO", "")
        kind = GateKind.WADO_URI if path_info == WADO_URI_ROOT else GateKind.DICOMWEB
        username: str | None = None
        study: str | None = None
        try:
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                raise GateDenied(403, "only reads pass the gate")
            claims = verify_viewer_token(self.context.viewer_key, _bearer_token(environ))
            username, study = claims.username, claims.study_instance_uid
            if not bound_to(claims, parse_cookie(environ.get("HTTP_COOKIE")).get(self._cookie, "")):
                raise TokenRejected("token not bound to this browser")
            path, query = split_raw_uri(_raw_uri(environ))
            target = parse_request(path, query, claims.study_instance_uid)
            kind = target.kind
            with get_engine(self.context.database_url).connect() as connection:
                allowed = accounts.viewer_token_allowed(connection, claims)
            if not allowed:
                raise TokenRejected("session ended, token revoked or study no longer allowed")
            if target.kind is GateKind.FRAMES:  # checks its instance itself
                answer = self._frames(environ, target)
            elif target.kind is GateKind.INSTANCE:
                answer = self._instance(environ, target)
            elif target.kind in _RETRIEVALS:
                self._locate(target)
                answer = self._retrieve(environ, target)
            elif target.kind in _INDEX_FILTERED:
                self._locate(target)
                answer = self._index_filtered_json(target)
            else:
                answer = _accel_redirect(self._locate(target))
        except TokenRejected as err:
            self._audit(environ, kind, 401, username, study, err.reason)
            return _deny(401, "authentication required")
        except GateDenied as err:
            self._audit(environ, kind, err.status, username, study, err.reason)
            return _deny(err.status, _DENIAL_MESSAGES.get(err.status, "not allowed"))
        except NotAcceptable as err:
            self._audit(environ, kind, 406, username, study, "transfer syntax not accepted")
            return _deny(406, str(err))
        except Exception:
            log.exception("gate: unexpected error, denying")
            self._audit(environ, kind, 403, username, study, "internal error")
            return _deny(403, "not allowed")
        self._audit(environ, kind, 200, username, study, target.note)
        return answer

    # ---- the archive index: is it inside the study?

    def _locate(self, target: GateRequest) -> str:
        """Check that the series and instance belong to the study; return the internal URI."""
        if target.instance is not None:
            orthanc_id, _ = self._instance_in_study(target)
            if target.kind is GateKind.WADO_URI:
                return f"{INTERNAL_PREFIX}/instances/{orthanc_id}/file"
        elif target.series is not None and self._series_study(target.series) != target.study:
            raise GateDenied(403, "series not in the token's study")
        return target.internal_uri()

    def _instance_in_study(self, target: GateRequest) -> tuple[str, str]:
        """The instance's Orthanc ID and stored transfer syntax, once the index places it in
        the request's study (and series, when the request names one)."""
        assert target.instance is not None
        series, study, orthanc_id, transfer_syntax = self._instance_location(target.instance)
        if study != target.study or (target.series is not None and series != target.series):
            raise GateDenied(403, "instance not in the token's study")
        if not orthanc_id or not set(orthanc_id) <= _ORTHANC_ID_CHARS:
            raise GateDenied(403, "instance has no archive ID")
        return orthanc_id, transfer_syntax

    def _instance_location(self, sop_uid: str) -> tuple[str, ...]:
        cached = self._instances.get(sop_uid)
        if cached is not None:
            return cached
        query = select(
            Instance.series_instance_uid,
            Instance.study_instance_uid,
            Instance.orthanc_id,
            Instance.transfer_syntax,
        ).where(Instance.sop_instance_uid == sop_uid)
        with session_scope(self.context.database_url) as session:
            row = session.exec(query).first()
        if row is None:
            raise GateDenied(403, "instance not in the archive index")
        location = (row[0], row[1], row[2], row[3])
        self._instances.put(sop_uid, location)
        return location

    # ---- searches and metadata: narrowed to the index's study (see webapp.dicom_json)

    def _index_filtered_json(self, target: GateRequest) -> _Answer:
        members = self._study_members(target.study)
        try:
            datasets = self._orthanc.dicomweb_json(target.internal_path, target.query)
        except PermanentUpstreamError:
            raise GateDenied(404, "not in the archive") from None
        except TransientUpstreamError as err:
            log.warning("gate: Orthanc did not answer a DICOMweb read: %s", err)
            raise GateDenied(502, "archive unavailable") from None
        if not isinstance(datasets, list):
            raise GateDenied(502, "archive answered something other than DICOM JSON")
        body = json.dumps(keep_study_members(datasets, members), separators=(",", ":")).encode()
        headers = [
            ("Content-Type", "application/dicom+json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "private, no-store"),
        ]
        return 200, headers, body

    def _study_members(self, study_uid: str) -> StudyMembers:
        """The study's patient, series and instances as indexed (never cached: a study grows)."""
        with session_scope(self.context.database_url) as session:
            patient = session.exec(
                select(Study.patient_id).where(Study.study_instance_uid == study_uid)
            ).first()
            rows = session.exec(
                select(Instance.series_instance_uid, Instance.sop_instance_uid).where(
                    Instance.study_instance_uid == study_uid
                )
            ).all()
        if patient is None:
            raise GateDenied(403, "study not in the archive index")
        return StudyMembers(
            study_uid,
            patient,
            frozenset(series for series, _ in rows),
            frozenset(sop for _, sop in rows),
        )

    # ---- frames, instances, series and studies (see webapp.retrieve)

    def _frames(self, environ: Environ, target: GateRequest) -> _Answer:
        """Frames as stored (Orthanc's raw frames, labelled) or decoded."""
        orthanc_id, stored = self._instance_in_study(target)
        syntax = answer_syntax(
            environ.get("HTTP_ACCEPT", ""),
            stored,
            OCTET_STREAM,
            decodable=stored in HTJ2K_SYNTAXES,
        )
        try:
            if syntax == stored:
                frames = [
                    self._orthanc.instance_frame_raw(orthanc_id, n - 1) for n in target.frames
                ]
            else:
                frames = explicit_le_frames(
                    self._orthanc.get_instance_file(orthanc_id), target.frames
                )
        except (PermanentUpstreamError, IndexError):
            raise GateDenied(404, "frame not in the instance") from None
        except TransientUpstreamError as err:
            log.warning("gate: Orthanc did not give a frame: %s", err)
            raise GateDenied(502, "archive unavailable") from None
        multipart = Multipart.new(OCTET_STREAM)
        body = multipart.whole((frame, syntax) for frame in frames)
        return 200, _multipart_headers(multipart, len(body)), body

    def _instance(self, environ: Environ, target: GateRequest) -> _Answer:
        """An instance as stored goes through nginx (Orthanc's own DICOMweb answer); one asked
        for in explicit VR little endian is decoded here."""
        uri = self._locate(target)
        _orthanc_id, stored = self._instance_in_study(target)
        syntax = answer_syntax(
            environ.get("HTTP_ACCEPT", ""), stored, DICOM, decodable=stored in HTJ2K_SYNTAXES
        )
        if syntax == stored:
            return _accel_redirect(uri)
        multipart = Multipart.new(DICOM)
        body = multipart.whole([(self._decoded_instance(target), syntax)])
        return 200, _multipart_headers(multipart, len(body)), body

    def _decoded_instance(self, target: GateRequest) -> bytes:
        orthanc_id, _stored = self._instance_in_study(target)
        try:
            return explicit_le_instance(self._orthanc.get_instance_file(orthanc_id))
        except PermanentUpstreamError:
            raise GateDenied(404, "not in the archive") from None
        except TransientUpstreamError as err:
            log.warning("gate: Orthanc did not give an instance: %s", err)
            raise GateDenied(502, "archive unavailable") from None

    def _retrieve(self, environ: Environ, target: GateRequest) -> _Answer:
        """A whole series or study: every instance the index places there, streamed as one
        multipart answer (one audit row), each as stored or decoded as the client accepts."""
        rows = self._indexed_instances(target.study, target.series)
        if not rows:
            raise GateDenied(404, "nothing indexed there")
        accept = environ.get("HTTP_ACCEPT", "")
        plan = [
            (
                orthanc_id,
                stored,
                answer_syntax(accept, stored, DICOM, decodable=stored in HTJ2K_SYNTAXES),
            )
            for orthanc_id, stored in rows
        ]  # every instance's answer is settled (or 406) before the first byte goes out
        multipart = Multipart.new(DICOM)
        headers = [
            ("Content-Type", multipart.content_type),
            ("Cache-Control", "private, no-store"),
        ]
        return 200, headers, self._instance_parts(multipart, plan)

    def _instance_parts(
        self, multipart: Multipart, plan: list[tuple[str, str, str]]
    ) -> Iterator[bytes]:
        """The parts, fetched from Orthanc a few ahead of the one being sent. An archive that
        stops answering mid-way ends the answer without its closing boundary, so the client
        sees it incomplete rather than short."""

        def fetch(orthanc_id: str, stored: str, syntax: str) -> bytes:
            data = self._orthanc.get_instance_file(orthanc_id)
            return data if syntax == stored else explicit_le_instance(data)

        with ThreadPoolExecutor(RETRIEVE_PREFETCH, thread_name_prefix="gate-retrieve") as pool:
            queued = iter(plan)
            pending: deque[tuple[Future[bytes], str]] = deque(
                (pool.submit(fetch, *step), step[2]) for step in islice(queued, RETRIEVE_PREFETCH)
            )
            while pending:
                future, syntax = pending.popleft()
                following = next(queued, None)
                if following is not None:
                    pending.append((pool.submit(fetch, *following), following[2]))
                try:
                    data = future.result()
                except Exception:
                    log.exception("gate: a series or study retrieve stopped mid-way")
                    for left, _ in pending:
                        left.cancel()
                    return
                yield from multipart.part(data, syntax)
        yield multipart.end()

    def _indexed_instances(self, study: str, series: str | None) -> list[tuple[str, str]]:
        """(Orthanc ID, stored transfer syntax) of every instance the index places in the
        study (and series), in series then instance order."""
        query = select(Instance.orthanc_id, Instance.transfer_syntax).where(
            Instance.study_instance_uid == study
        )
        if series is not None:
            query = query.where(Instance.series_instance_uid == series)
        query = query.order_by(Instance.series_instance_uid, Instance.sop_instance_uid)
        with session_scope(self.context.database_url) as session:
            rows = session.exec(query).all()
        return [
            (orthanc_id, syntax)
            for orthanc_id, syntax in rows
            if orthanc_id and set(orthanc_id) <= _ORTHANC_ID_CHARS
        ]

    def _series_study(self, series_uid: str) -> str:
        cached = self._series.get(series_uid)
        if cached is not None:
            return cached[0]
        query = select(Series.study_instance_uid).where(Series.series_instance_uid == series_uid)
        with session_scope(self.context.database_url) as session:
            study = session.exec(query).first()
        if study is None:
            raise GateDenied(403, "series not in the archive index")
        self._series.put(series_uid, (study,))
        return study

    # ---- audit

    def _audit(
        self,
        environ: Environ,
        kind: GateKind,
        status: int,
        username: str | None,
        study: str | None,
        reason: str | None,
    ) -> None:
        """Denials are written before the answer; allowed reads in the next batch."""
        if study:
            environ[STUDY_KEY] = study  # for the request's log line
        record = AuditRecord(
            action=kind,
            status=status,
            request_id=request_id_from(environ),
            username=username,
            client_addr=client_addr_from(environ, self.context.trusted_proxies),
            study_instance_uid=study,
            reason=reason,
        )
        if status < 400:
            self.context.audit.record_soon(record)
            return
        try:
            self.context.audit.record_denial(record)
        except Exception:
            # The denial stands; the log keeps what the audit table could not.
            log.exception(
                "gate: audit write failed for a %d (%s, request %s)",
                status,
                kind,
                record.request_id,
            )


def _multipart_headers(multipart: Multipart, length: int) -> list[tuple[str, str]]:
    return [
        ("Content-Type", multipart.content_type),
        ("Content-Length", str(length)),
        ("Cache-Control", "private, no-store"),
    ]


def _accel_redirect(internal_uri: str) -> _Answer:
    # No Content-Type of ours: nginx would otherwise keep it over Orthanc's (DICOM, JSON).
    headers = [
        ("X-Accel-Redirect", internal_uri),
        ("Cache-Control", "private, no-store"),
        ("Content-Length", "0"),
    ]
    return 200, headers, b""


def _deny(status: int, message: str) -> _Answer:
    body = json.dumps({"error": message}).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if status == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="neuronova"'))
    return status, headers, body


def _bearer_token(environ: Environ) -> str:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if len(header) > MAX_TOKEN_LENGTH + 16:
        raise TokenRejected("authorization header oversized")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("no bearer token")
    return token.strip()


def _raw_uri(environ: Environ) -> str:
    """The request line's target exactly as sent (gunicorn: RAW_URI; werkzeug: REQUEST_URI)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not isinstance(raw, str):
        raise GateDenied(403, "request URI unavailable")
    return raw
