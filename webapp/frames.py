"""WADO-RS frames, built by the gate from the frames Orthanc stores.

Orthanc's DICOMweb plugin cannot serve frames of HTJ2K: 1.10 labels the codestream explicit
little endian (a viewer that trusts the label draws noise), 1.12 answers 500 whatever the
client accepts. Orthanc's core API gives each frame as stored (`/instances/{id}/frames/{n}/raw`),
and the archive index knows the transfer syntax, so the gate wraps those bytes itself as
PS3.18 asks: `multipart/related; type="application/octet-stream"`, one part per frame, each
labelled with the stored transfer syntax. These are the only pixel data that pass through the
webapp; whole instances (what OHIF reads) still go through nginx by `X-Accel-Redirect`.

The archive keeps frames as stored and the gate does not transcode: a client that asks for
another transfer syntax gets 406 and the one it can have.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

OCTET_STREAM = "application/octet-stream"
_MEDIA_RANGE = re.compile(r"\s*([^;,\s]+)\s*((?:;[^,]*)?)")
_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*("[^"]*"|[^;\s]*)')


class FrameNotAcceptable(Exception):
    """The client accepts no form in which the archive holds the frame."""

    def __init__(self, stored_transfer_syntax: str) -> None:
        super().__init__(
            f"frames are kept as {stored_transfer_syntax}; accept "
            f'multipart/related; type="{OCTET_STREAM}"; transfer-syntax=* (or that UID)'
        )


def frames_acceptable(accept: str, stored_transfer_syntax: str) -> bool:
    """Whether a client sending `Accept: accept` can take frames in their stored syntax.

    No Accept, `*/*`, or `multipart/related` of octet-stream frames with `transfer-syntax=*`
    or the stored UID are fine. Octet-stream without a transfer syntax means explicit little
    endian in PS3.18, which only an uncompressed archive has.
    """
    if not accept.strip():
        return True
    for media_type, params in _media_ranges(accept):
        if media_type == "*/*":
            return True
        if media_type not in ("multipart/related", "multipart/*"):
            continue
        if params.get("type", OCTET_STREAM) not in (OCTET_STREAM, "*/*"):
            continue
        wanted = params.get("transfer-syntax", "1.2.840.10008.1.2.1")
        if wanted in ("*", stored_transfer_syntax):
            return True
    return False


def multipart_frames(frames: Iterable[bytes], transfer_syntax: str) -> tuple[str, bytes]:
    """The Content-Type and body of a multipart/related answer, one part per frame."""
    boundary = f"neuronova-{secrets.token_hex(12)}"
    part_type = f"{OCTET_STREAM}; transfer-syntax={transfer_syntax}"
    body = bytearray()
    for frame in frames:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        body += frame
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="{OCTET_STREAM}"; boundary={boundary}'
    return content_type, bytes(body)


def _media_ranges(accept: str) -> Iterable[tuple[str, dict[str, str]]]:
    """Each media range of an Accept header with its parameters (quotes removed)."""
    for match in _MEDIA_RANGE.finditer(accept):
        params = {name.lower(): value.strip('"') for name, value in _PARAM.findall(match.group(2))}
        yield match.group(1).lower(), params
