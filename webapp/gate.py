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

import hashlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from sqlmodel import select
from werkzeug.http import parse_cookie

from common.db import Instance, Series, Study, get_engine, session_scope
from common.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
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
from webapp.multipart import MultipartError, parse_content_type, read_parts
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
RELAY_READ = 256 * 1024  # bytes read at a time from Orthanc's own series or study answer


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
        orthanc_id, stored = self._instance_in_study(target)
        syntax = answer_syntax(
            environ.get("HTTP_ACCEPT", ""), stored, DICOM, decodable=stored in HTJ2K_SYNTAXES
        )
        if syntax == stored:
            return _accel_redirect(target.internal_uri())
        try:
            decoded = explicit_le_instance(self._orthanc.get_instance_file(orthanc_id))
        except PermanentUpstreamError:
            raise GateDenied(404, "not in the archive") from None
        except TransientUpstreamError as err:
            log.warning("gate: Orthanc did not give an instance: %s", err)
            raise GateDenied(502, "archive unavailable") from None
        multipart = Multipart.new(DICOM)
        body = multipart.whole([(decoded, syntax)])
        return 200, _multipart_headers(multipart, len(body)), body

    def _retrieve(self, environ: Environ, target: GateRequest) -> _Answer:
        """A whole series or study: every instance the index places there, streamed as one
        multipart answer (one audit row), each as stored or decoded as the client accepts."""
        rows = self._indexed_instances(target.study, target.series)
        if not rows:
            raise GateDenied(404, "nothing indexed there")
        accept = environ.get("HTTP_ACCEPT", "")
        plan = [
            _Planned(
                row.orthanc_id,
                row.stored,
                answer_syntax(accept, row.stored, DICOM, decodable=row.stored in HTJ2K_SYNTAXES),
                row.stored_sha256,
            )
            for row in rows
        ]  # every instance's answer is settled (or 406) before the first byte goes out
        multipart = Multipart.new(DICOM)
        headers = [
            ("Content-Type", multipart.content_type),
            ("Cache-Control", "private, no-store"),
        ]
        if all(step.syntax == step.stored for step in plan):
            return 200, headers, self._relayed_parts(multipart, target.internal_path, plan)
        return 200, headers, self._fetched_parts(multipart, plan)

    def _relayed_parts(
        self, multipart: Multipart, internal_path: str, plan: list[_Planned]
    ) -> Iterator[bytes]:
        """As stored: Orthanc's own series or study answer, relayed part by part, and only the
        parts whose bytes are exactly a file the index recorded for that series or study (its
        SHA-256 at ingest's read-back). Orthanc finds a series or study by its UIDs alone, so
        anything else it holds under them (another patient's file naming the study, an arrival
        not verified yet) is left out here; an instance the index holds that Orthanc's answer
        lacked is then fetched on its own, so the answer is whole either way."""
        expected = {step.stored_sha256: step for step in plan if step.stored_sha256}
        sent: set[str] = set()
        response = None
        try:
            response = self._orthanc.dicomweb_retrieve_stream(internal_path)
            boundary = parse_content_type(response.headers.get("Content-Type")).boundary
            # Small reads: each part found costs a copy of what is left of the read.
            parts = read_parts(response, boundary, max_parts=2 * len(plan) + 16, chunk=RELAY_READ)
            for data in parts:
                digest = hashlib.sha256(data).hexdigest()
                step = expected.get(digest)
                if step is None or digest in sent:
                    log.warning("gate: a part of Orthanc's answer is not the index's: left out")
                    continue
                sent.add(digest)
                yield b"".join(multipart.part(data, step.stored))  # one write, not three
        except (UpstreamError, MultipartError) as err:
            log.warning("gate: Orthanc's own retrieve failed (%s): the rest one by one", err)
        finally:
            if response is not None:
                response.release_conn()
        missing = [step for step in plan if step.stored_sha256 not in sent]
        yield from self._fetched_parts(multipart, missing)

    def _fetched_parts(self, multipart: Multipart, plan: list[_Planned]) -> Iterator[bytes]:
        """The parts, each fetched from Orthanc on its own, a few ahead of the one being sent
        (and decoded where the client asked for explicit VR little endian). An archive that
        stops answering mid-way ends the answer without its closing boundary, so the client
        sees it incomplete rather than short."""

        def fetch(step: _Planned) -> bytes:
            data = self._orthanc.get_instance_file(step.orthanc_id)
            return data if step.syntax == step.stored else explicit_le_instance(data)

        with ThreadPoolExecutor(RETRIEVE_PREFETCH, thread_name_prefix="gate-retrieve") as pool:
            queued = iter(plan)
            pending: deque[tuple[Future[bytes], str]] = deque(
                (pool.submit(fetch, step), step.syntax)
                for step in islice(queued, RETRIEVE_PREFETCH)
            )
            while pending:
                future, syntax = pending.popleft()
                following = next(queued, None)
                if following is not None:
                    pending.append((pool.submit(fetch, following), following.syntax))
                try:
                    data = future.result()
                except Exception:
                    log.exception("gate: a series or study retrieve stopped mid-way")
                    for left, _ in pending:
                        left.cancel()
                    return
                yield from multipart.part(data, syntax)
        yield multipart.end()

    def _indexed_instances(self, study: str, series: str | None) -> list[_Planned]:
        """Every instance the index places in the study (and series), in series then
        instance order: where Orthanc keeps it, its stored syntax and file hash (answered as
        stored until `_retrieve` says otherwise)."""
        query = select(Instance.orthanc_id, Instance.transfer_syntax, Instance.stored_sha256).where(
            Instance.study_instance_uid == study
        )
        if series is not None:
            query = query.where(Instance.series_instance_uid == series)
        query = query.order_by(Instance.series_instance_uid, Instance.sop_instance_uid)
        with session_scope(self.context.database_url) as session:
            rows = session.exec(query).all()
        return [
            _Planned(orthanc_id, syntax, syntax, digest)
            for orthanc_id, syntax, digest in rows
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


@dataclass(frozen=True)
class _Planned:
    """One instance of a series or study retrieve, as the index has it, and how it is answered."""

    orthanc_id: str
    stored: str  # its stored transfer syntax
    syntax: str  # the one it is answered in (stored, or explicit VR little endian: decoded)
    stored_sha256: str


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
