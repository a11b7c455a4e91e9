"""Parse DICOMweb and WADO-URI requests into allow-listed identifiers, or refuse them.

The gate never forwards what the browser sent: it reads the raw request line, accepts only
the shapes below with identifiers that are DICOM UIDs, and builds the internal URI from those
parsed values. Anything else (percent-encoding in the path, `..`, unknown parameters, a
parameter given twice, another study) is refused here, before any lookup.

    /dicom-web/studies?StudyInstanceUID=A[&…]                QIDO studies (only A)
    /dicom-web/studies/A/series | /instances                  QIDO within A
    /dicom-web/studies/A/series/S/instances                   QIDO within S of A
    /dicom-web/studies/A[/series/S[/instances/I]]/metadata    metadata
    /dicom-web/studies/A/series/S/instances/I                 one instance
    /dicom-web/studies/A/series/S/instances/I/frames/1[,2…]   frames
    /wado?requestType=WADO&studyUID=A&objectUID=I[&…]         WADO-URI (whole file)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from tasks.dicom.uid import is_uid

INTERNAL_PREFIX = "/_orthanc"
DICOMWEB_ROOT = "/dicom-web"
WADO_URI_ROOT = "/wado"
MAX_URI_LENGTH = 2048
# Study or series retrieval in bulk, bulkdata, rendered and thumbnails: not needed by the viewer.
UNSUPPORTED = "DICOMweb request not offered through the viewer gate"

_PATH_CHARS = re.compile(r"^[A-Za-z0-9./_,-]+$")
_FRAMES = re.compile(r"^[1-9][0-9]{0,5}(?:,[1-9][0-9]{0,5}){0,63}$")
_NUMBER = re.compile(r"^[0-9]{1,6}$")
_INCLUDEFIELD = re.compile(r"^(?:all|[A-Za-z0-9]{1,64}(?:,[A-Za-z0-9]{1,64}){0,63})$")
_MODALITY = re.compile(r"^[A-Z]{1,16}$")
_BOOLEAN = re.compile(r"^(?:true|false)$")


Check = Callable[[str], object]


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
}
_WADO_URI_PARAMS: dict[str, Check] = {
    "requestType": re.compile(r"^WADO$").fullmatch,
    "studyUID": _uid_param,
    "seriesUID": _uid_param,
    "objectUID": _uid_param,
    "contentType": re.compile(r"^application/dicom$").fullmatch,
    "transferSyntax": lambda v: v == "*" or is_uid(v),
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

    kind: str
    study: str
    series: str | None = None
    instance: str | None = None
    internal_path: str = ""  # under Orthanc's root; empty for WADO-URI until the ID is known
    query: tuple[tuple[str, str], ...] = field(default=())

    def internal_uri(self) -> str:
        """The X-Accel-Redirect target: the internal location, parsed values only."""
        suffix = f"?{urlencode(self.query)}" if self.query else ""
        return f"{INTERNAL_PREFIX}{self.internal_path}{suffix}"


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


def parse_dicomweb(path: str, query: str, token_study: str) -> GateRequest:
    """A DICOMweb request under /dicom-web, checked against the token's study."""
    if not path.startswith(DICOMWEB_ROOT + "/"):
        raise GateDenied(404, "not a DICOMweb path")
    parts = path[len(DICOMWEB_ROOT) + 1 :].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise GateDenied(403, "empty or relative path segment")
    if parts[0] != "studies":
        raise GateDenied(404, "unknown DICOMweb resource")
    params = parse_query(query, _QIDO_PARAMS)

    if len(parts) == 1:  # QIDO-RS studies: only with the token's study as filter
        if params.get("StudyInstanceUID") != token_study:
            raise GateDenied(403, "study search must be limited to the token's study")
        return GateRequest(
            "qido-studies", token_study, internal_path="/dicom-web/studies", query=_ordered(params)
        )

    study = _uid_at(parts, 1)
    if study != token_study:
        raise GateDenied(403, "another study than the token's")
    rest = parts[2:]
    base = f"/dicom-web/studies/{study}"

    if rest in (["series"], ["instances"]):
        _only_filters_within(params, study)
        return GateRequest(
            f"qido-{rest[0]}", study, internal_path=f"{base}/{rest[0]}", query=_ordered(params)
        )
    if rest == ["metadata"]:
        _no_params(params)
        return GateRequest("metadata", study, internal_path=f"{base}/metadata")
    if len(rest) < 2 or rest[0] != "series":
        raise GateDenied(403, UNSUPPORTED)
    series = _uid_at(rest, 1)
    base = f"{base}/series/{series}"
    tail = rest[2:]
    if tail == ["instances"]:
        _only_filters_within(params, study)
        if params.get("SeriesInstanceUID", series) != series:
            raise GateDenied(403, "another series than the path's")
        return GateRequest(
            "qido-instances", study, series, internal_path=f"{base}/instances",
            query=_ordered(params),
        )  # fmt: skip
    _no_params(params)
    if tail == ["metadata"]:
        return GateRequest("metadata", study, series, internal_path=f"{base}/metadata")
    if len(tail) < 2 or tail[0] != "instances":
        raise GateDenied(403, UNSUPPORTED)
    instance = _uid_at(tail, 1)
    base = f"{base}/instances/{instance}"
    last = tail[2:]
    if not last:
        return GateRequest("instance", study, series, instance, internal_path=base)
    if last == ["metadata"]:
        return GateRequest("metadata", study, series, instance, internal_path=f"{base}/metadata")
    if len(last) == 2 and last[0] == "frames" and _FRAMES.fullmatch(last[1]):
        return GateRequest(
            "frames", study, series, instance, internal_path=f"{base}/frames/{last[1]}"
        )
    raise GateDenied(403, UNSUPPORTED)


def parse_wado_uri(path: str, query: str, token_study: str) -> GateRequest:
    """A WADO-URI request: whole DICOM files of the token's study only."""
    if path != WADO_URI_ROOT:
        raise GateDenied(404, "not a WADO-URI path")
    params = parse_query(query, _WADO_URI_PARAMS)
    for required in ("requestType", "studyUID", "objectUID"):
        if required not in params:
            raise GateDenied(403, f"WADO-URI needs {required}")
    if params["studyUID"] != token_study:
        raise GateDenied(403, "another study than the token's")
    return GateRequest(
        "wado-uri", token_study, params.get("seriesUID"), params["objectUID"], internal_path=""
    )


def _uid_at(parts: list[str], index: int) -> str:
    if index >= len(parts) or not is_uid(parts[index]):
        raise GateDenied(403, "malformed UID in path")
    return parts[index]


def _only_filters_within(params: dict[str, str], study: str) -> None:
    if params.get("StudyInstanceUID", study) != study:
        raise GateDenied(403, "another study than the token's")


def _ordered(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(params.items()))


def _no_params(params: dict[str, str]) -> None:
    if params:
        raise GateDenied(403, "query parameters are only accepted on searches")
