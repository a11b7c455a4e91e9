"""The STOW-RS body reader: parts written to files as the stream arrives, whatever the chunk
edges; a body that is not what it claims is refused with where it went wrong."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from webapp import multipart
from webapp.multipart import MultipartError, parse_content_type, split_parts

BOUNDARY = b"nn-boundary-7d2f"


def related_body(parts: list[bytes], *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A multipart/related body as a STOW-RS client sends it."""
    out = [preamble]
    for part in parts:
        out.append(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + part)
        out.append(b"\r\n")
    out.append(b"--" + BOUNDARY + b"--\r\n" + epilogue)
    return b"".join(out)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_parts_come_out_byte_for_byte_whatever_the_chunk_edges(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multipart, "CHUNK", chunk)
    # Bytes that look like a boundary's start, CRLFs and dashes inside the payloads.
    payloads = [b"DICM\r\n--nn-bound\r\n" * 5, b"", b"\r\n--" + b"x" * 300, bytes(range(256))]
    body = related_body(payloads, preamble=b"ignored preamble\r\n", epilogue=b"ignored")
    parts = list(split_parts(io.BytesIO(body), BOUNDARY, tmp_path, max_parts=10))
    assert [p.path.read_bytes() for p in parts] == payloads
    assert [p.size for p in parts] == [len(x) for x in payloads]
    assert {p.content_type for p in parts} == {"application/dicom"}


def test_a_part_without_headers_has_no_media_type(tmp_path: Path) -> None:
    body = b"--" + BOUNDARY + b"\r\n\r\nDATA\r\n--" + BOUNDARY + b"--"
    (part,) = split_parts(io.BytesIO(body), BOUNDARY, tmp_path, max_parts=1)
    assert part.path.read_bytes() == b"DATA" and part.content_type == ""


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"no boundary at all", "no part"),
        (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\nDICM", "closing boundary"),
        (b"--" + BOUNDARY + b"\r\nContent-Type: " + b"x" * 20_000, "headers exceed"),
    ],
)
def test_a_broken_body_is_refused_with_the_reason(body: bytes, why: str, tmp_path: Path) -> None:
    with pytest.raises(MultipartError, match=why):
        list(split_parts(io.BytesIO(body), BOUNDARY, tmp_path, max_parts=10))


def test_more_parts_than_allowed_are_refused(tmp_path: Path) -> None:
    body = related_body([b"a", b"b", b"c"])
    with pytest.raises(MultipartError, match="more than 2 parts"):
        list(split_parts(io.BytesIO(body), BOUNDARY, tmp_path, max_parts=2))


def test_the_content_type_gives_boundary_and_type() -> None:
    related = parse_content_type('multipart/related; type="application/dicom"; boundary=abc')
    assert (related.boundary, related.type) == (b"abc", "application/dicom")
    assert parse_content_type("multipart/related; boundary=abc").type == ""
    with pytest.raises(MultipartError, match="expected multipart/related"):
        parse_content_type("application/dicom")
    with pytest.raises(MultipartError, match="boundary"):
        parse_content_type("multipart/related; type=application/dicom")
    with pytest.raises(MultipartError):
        parse_content_type(None)
