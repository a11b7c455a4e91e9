"""Parse DICOMweb and WADO-URI requests into allow-listed identifiers, or refuse them.

The gate never forwards what the browser sent: it reads the raw request line, accepts only the
shapes in `ROUTES` with identifiers that are DICOM UIDs, and builds the internal URI from those
parsed values. Anything else (percent-encoding in the path, `..`, unknown parameters, a
parameter given twice, another study) is refused here, before any lookup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from urllib.parse import parse_qsl, urlencode

from tasks.dicom.uid import is_uid
from tasks.patients.mrn import is_mrn

INTERNAL_PREFIX = "/_orthanc"
DICOMWEB_ROOT = "/dicom-web"
WADO_URI_ROOT = "/wado"
MAX_URI_LENGTH = 2048
# Bulkdata, rendered and thumbnails: not offered.
UNSUPPORTED = "DICOMweb request not offered through the viewer gate"
MALFORMED_UID = "malformed UID in path"

_PATH_CHARS = re.compile(r"^[A-Za-z0-9./_,-]+$")
_FRAMES = re.compile(r"^[1-9][0-9]{0,5}(?:,[1-9][0-9]{0,5}){0,63}$")
_NUMBER = re.compile(r"^[0-9]{1,6}$")
_INCLUDEFIELD = re.compile(r"^(?:all|[A-Za-z0-9]{1,64}(?:,[A-Za-z0-9]{1,64}){0,63})$")
_MODALITY = re.compile(r"^[A-Z]{1,16}$")
_BOOLEAN = re.compile(r"^(?:true|false)$")


Check = Callable[[str], object]


class GateKind(StrEnum):
    """What a request through the gate reads; its audit rows carry this as their action."""

    DICOMWEB = "dicomweb"  # a DICOMweb request refused before its path was parsed
    QIDO_STUDIES = "qido-studies"
    QIDO_SERIES = "qido-series"
    QIDO_INSTANCES = "qido-instances"
    METADATA = "metadata"
    INSTANCE = "instance"
    FRAMES = "frames"
    RETRIEVE_STUDY = "retrieve-study"  # a whole study (WADO-RS), one audit row
    RETRIEVE_SERIES = "retrieve-series"
    WADO_URI = "wado-uri"


def _uid_param(value: str) -> bool:
    return is_uid(value)


_QIDO_PARAMS: dict[str, Check] = {
    "StudyInstanceUID": _uid_param,
    "SeriesInstanceUID": _uid_param,
    "SOPInstanceUID": _uid_param,
    "Modality": _MODALITY.fullmatch,
    "includefield": _INCLUDEFIELD.fullmatch,
    "limit": _NUMBER.fullmatch,
    "offset": _NUMBER.fullmatch,
    "fuzzymatching": _BOOLEAN.fullmatch,
    # A patient filter (OHIF looks up the patient's other studies by it): it only narrows.
    "PatientID": is_mrn,
    "00100020": is_mrn,
}
_WADO_PARAMS: dict[str, Check] = {
    "requestType": re.compile(r"^WADO$").fullmatch,
    "studyUID": _uid_param,
    "seriesUID": _uid_param,
    "objectUID": _uid_param,
    "contentType": re.compile(r"^application/dicom$").fullmatch,
    "transferSyntax": lambda v: v == "*" or is_uid(v),
}
_NO_PARAMS: dict[str, Check] = {}


@dataclass(frozen=True)
class _Slot:
    """A `{name}` segment of a route's path: what it accepts, and the refusal when it does not."""

    check: Check
    refusal: str


_SLOTS: dict[str, _Slot] = {
    "study": _Slot(_uid_param, MALFORMED_UID),
    "series": _Slot(_uid_param, MALFORMED_UID),
    "instance": _Slot(_uid_param, MALFORMED_UID),
    "frames": _Slot(_FRAMES.fullmatch, UNSUPPORTED),
}


class GateDenied(Exception):
    """The request is refused; `reason` is safe for the audit log and the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class GateRequest:
    """A parsed request: what it reads, inside which study, and where Orthanc serves it."""

    kind: GateKind
    study: str
    series: str | None = None
    instance: str | None = None
    internal_path: str = ""  # under Orthanc's root; empty for WADO-URI until the ID is known
    query: tuple[tuple[str, str], ...] = field(default=())
    frames: tuple[int, ...] = ()  # WADO-RS frame numbers, from 1 as in the path
    note: str | None = None  # for the audit row of an allowed request (e.g. a narrowed search)

    def internal_uri(self) -> str:
        """The X-Accel-Redirect target: the internal location, parsed values only."""
        suffix = f"?{urlencode(self.query)}" if self.query else ""
        return f"{INTERNAL_PREFIX}{self.internal_path}{suffix}"


# A route's builder: the request from the route, its path's slot values, the checked query
# parameters and the token's study (the matcher checks the study it names against the token).
Builder = Callable[["Route", Mapping[str, str], Mapping[str, str], str], GateRequest]


@dataclass(frozen=True)
class Route:
    """One accepted request shape: the path (with `{slot}` segments), what it reads, the query
    parameters it takes, and how its request (and internal path) is built from parsed values."""

    path: str
    kind: GateKind
    params: Mapping[str, Check]
    build: Builder

    @cached_property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/"))

    def has_shape_of(self, segments: tuple[str, ...]) -> bool:
        """Same number of segments, and the same words where the route has no slot."""
        return len(segments) == len(self.segments) and all(
            _is_slot(pattern) or pattern == segment
            for pattern, segment in zip(self.segments, segments, strict=True)
        )

    def slot_values(self, segments: tuple[str, ...]) -> dict[str, str]:
        """The values in the route's slots, each checked (a path of the route's shape)."""
        values: dict[str, str] = {}
        for pattern, segment in zip(self.segments, segments, strict=True):
            if _is_slot(pattern):
                slot = _SLOTS[pattern[1:-1]]
                if not slot.check(segment):
                    raise GateDenied(403, slot.refusal)
                values[pattern[1:-1]] = segment
        return values

    def internal_path(self, slots: Mapping[str, str]) -> str:
        """The route's own path with the parsed slot values in place (never the request's)."""
        return self.path.format_map(slots)


def _study_search(
    route: Route, slots: Mapping[str, str], params: Mapping[str, str], token_study: str
) -> GateRequest:
    """QIDO for studies: only with the token's study as the filter. A search by patient alone
    (the viewer looking for the patient's other studies) is narrowed to the token's study, and
    the patient filter is kept: it answers that study when it is the patient's, nothing else."""
    study = params.get("StudyInstanceUID")
    if study is None and ("PatientID" in params or "00100020" in params):
        narrowed = {**params, "StudyInstanceUID": token_study}
        return GateRequest(
            route.kind,
            token_study,
            internal_path=route.internal_path(slots),
            query=_ordered(narrowed),
            note="patient search narrowed to the token's study",
        )
    if study != token_study:
        raise GateDenied(403, "study search must be limited to the token's study")
    return GateRequest(
        route.kind, study, internal_path=route.internal_path(slots), query=_ordered(params)
    )


def _search(
    route: Route, slots: Mapping[str, str], params: Mapping[str, str], token_study: str
) -> GateRequest:
    """QIDO inside the path's study (or series): filters may repeat the path's UIDs, no others."""
    study, series = slots["study"], slots.get("series")
    if params.get("StudyInstanceUID", study) != study:
        raise GateDenied(403, "another study than the token's")
    if series is not None and params.get("SeriesInstanceUID", series) != series:
        raise GateDenied(403, "another series than the path's")
    return GateRequest(
        route.kind, study, series, internal_path=route.internal_path(slots), query=_ordered(params)
    )


def _read(
    route: Route, slots: Mapping[str, str], params: Mapping[str, str], token_study: str
) -> GateRequest:
    """Metadata, an instance or its frames, named by the path alone."""
    study, series, instance = slots["study"], slots.get("series"), slots.get("instance")
    frames = tuple(int(n) for n in slots["frames"].split(",")) if "frames" in slots else ()
    return GateRequest(
        route.kind, study, series, instance, route.internal_path(slots), frames=frames
    )


def _wado_uri(
    route: Route, slots: Mapping[str, str], params: Mapping[str, str], token_study: str
) -> GateRequest:
    """A whole DICOM file; the gate finds its internal location once the index names it."""
    for required in ("requestType", "studyUID", "objectUID"):
        if required not in params:
            raise GateDenied(403, f"WADO-URI needs {required}")
    return GateRequest(route.kind, params["studyUID"], params.get("seriesUID"), params["objectUID"])


_STUDIES = DICOMWEB_ROOT + "/studies"
_STUDY_SEGMENTS = tuple(_STUDIES[1:].split("/"))
_STUDY = _STUDIES + "/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

# Every request the gate lets through; nothing else is. Searches (QIDO) take filters, reads
# (metadata, a study, a series, an instance, frames) take no parameters, WADO-URI names its
# identifiers in the query.
ROUTES: tuple[Route, ...] = (
    #     path                              kind                     query          build
    Route(_STUDIES,                         GateKind.QIDO_STUDIES,   _QIDO_PARAMS,  _study_search),
    Route(_STUDY + "/series",               GateKind.QIDO_SERIES,    _QIDO_PARAMS,  _search),
    Route(_STUDY + "/instances",            GateKind.QIDO_INSTANCES, _QIDO_PARAMS,  _search),
    Route(_SERIES + "/instances",           GateKind.QIDO_INSTANCES, _QIDO_PARAMS,  _search),
    Route(_STUDY + "/metadata",             GateKind.METADATA,       _NO_PARAMS,    _read),
    Route(_SERIES + "/metadata",            GateKind.METADATA,       _NO_PARAMS,    _read),
    Route(_INSTANCE + "/metadata",          GateKind.METADATA,       _NO_PARAMS,    _read),
    Route(_STUDY,                           GateKind.RETRIEVE_STUDY, _NO_PARAMS,    _read),
    Route(_SERIES,                          GateKind.RETRIEVE_SERIES, _NO_PARAMS,   _read),
    Route(_INSTANCE,                        GateKind.INSTANCE,       _NO_PARAMS,    _read),
    Route(_INSTANCE + "/frames/{frames}",   GateKind.FRAMES,         _NO_PARAMS,    _read),
    Route(WADO_URI_ROOT,                    GateKind.WADO_URI,       _WADO_PARAMS,  _wado_uri),
)  # fmt: skip


def split_raw_uri(raw_uri: str) -> tuple[str, str]:
    """Path and query of the request line as sent (no decoding), refusing odd characters."""
    if not raw_uri or len(raw_uri) > MAX_URI_LENGTH:
        raise GateDenied(403, "request URI missing or too long")
    if "#" in raw_uri:
        raise GateDenied(403, "fragment in request URI")
    path, _, query = raw_uri.partition("?")
    if not _PATH_CHARS.fullmatch(path):
        # Covers %-encoding (encoded or double-encoded traversal), backslashes, spaces, ';'.
        raise GateDenied(403, "unexpected characters in path")
    return path, query


def parse_query(query: str, allowed: Mapping[str, Check]) -> dict[str, str]:
    """Decoded parameters, each known, given once and well-formed."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise GateDenied(403, "malformed query string") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        check = allowed.get(key)
        if check is None:
            raise GateDenied(403, f"query parameter not allowed: {key[:32]!r}")
        if key in params:
            raise GateDenied(403, f"query parameter repeated: {key}")
        if not check(value):
            raise GateDenied(403, f"malformed value for {key}")
        params[key] = value
    return params


def parse_request(path: str, query: str, token_study: str) -> GateRequest:
    """The request, read by the route of `ROUTES` whose shape it has, inside the token's study.

    The checks run in the order that makes the audit trail say what matters most: the query's
    names and values, then the study the path names (another study's is refused as such), then
    the shape of the rest.
    """
    segments = _checked_segments(path)
    dicomweb = segments[:1] == _STUDY_SEGMENTS[:1]
    params = parse_query(query, _QIDO_PARAMS if dicomweb else _WADO_PARAMS)
    if dicomweb and len(segments) > 2:
        if not is_uid(segments[2]):
            raise GateDenied(403, _SLOTS["study"].refusal)
        if segments[2] != token_study:
            raise GateDenied(403, "another study than the token's")
    route, slots = match_route(segments)
    if params and not route.params:
        raise GateDenied(403, "query parameters are only accepted on searches")
    request = route.build(route, slots, params, token_study)
    if request.study != token_study:
        raise GateDenied(403, "another study than the token's")
    return request


def _checked_segments(path: str) -> tuple[str, ...]:
    """The path's segments, under a root the gate serves, none empty or relative."""
    segments = tuple(path[1:].split("/")) if path.startswith("/") else ()
    if not any(segments[:1] == route.segments[:1] for route in ROUTES):
        raise GateDenied(404, "not a DICOMweb or WADO-URI path")
    if any(segment in ("", ".", "..") for segment in segments):
        raise GateDenied(403, "empty or relative path segment")
    if not any(segments[:2] == route.segments[:2] for route in ROUTES):
        raise GateDenied(404, "unknown DICOMweb resource")
    return segments


def match_route(segments: tuple[str, ...]) -> tuple[Route, dict[str, str]]:
    """The route whose shape the path has, and the values of its slots; GateDenied otherwise."""
    for route in ROUTES:
        if route.has_shape_of(segments):
            return route, route.slot_values(segments)
    raise GateDenied(403, UNSUPPORTED)


def _is_slot(pattern: str) -> bool:
    return pattern.startswith("{") and pattern.endswith("}")


def _ordered(params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(params.items()))
