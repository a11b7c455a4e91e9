"""A `multipart/related` body (STOW-RS, PS3.18 §8.6.1) split into one file per part, read
as a stream: a study of a gigabyte never sits in memory, only one chunk and a boundary's
length of look-behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
MAX_PART_HEADERS = 16 * 1024  # bytes of headers per part (a few lines in practice)
_CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not the multipart/related it claims to be (the message says where)."""


@dataclass(frozen=True)
class Part:
    path: Path  # where its bytes were written
    content_type: str  # the part's media type, lower case, without parameters
    size: int


@dataclass(frozen=True)
class RelatedType:
    """What the request's Content-Type says of its body."""

    boundary: bytes
    type: str  # the `type` parameter: the parts' media type (application/dicom for STOW)


def parse_content_type(header: str | None) -> RelatedType:
    """The boundary and `type` of a `multipart/related` Content-Type header."""
    message = Message()
    message["Content-Type"] = header or ""
    if message.get_content_type() != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {message.get_content_type()!r}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise MultipartError("multipart/related without a valid boundary parameter")
    kind = message.get_param("type")
    return RelatedType(boundary.encode("latin-1"), kind.lower() if isinstance(kind, str) else "")


def split_parts(
    stream: IO[bytes], boundary: bytes, folder: Path, *, max_parts: int
) -> Iterator[Part]:
    """Write each part of the body into `folder` (part-00001, …) and yield it once complete.

    Raises MultipartError for a body that ends before its closing boundary, a part whose
    headers are too long, or more than `max_parts` parts.
    """
    reader = _Reader(stream, b"\r\n--" + boundary)
    # The first delimiter may open the body without the CRLF that precedes the others.
    reader.buffer = _CRLF
    if not reader.skip_to_delimiter():
        raise MultipartError("the body holds no part (no boundary found)")
    count = 0
    while True:
        tail = reader.read_exact(2)
        if tail == b"--":
            return  # the closing delimiter; an epilogue, if any, is ignored
        reader.skip_line(tail)
        count += 1
        if count > max_parts:
            raise MultipartError(f"more than {max_parts} parts in one request")
        headers = reader.read_headers()
        path = folder / f"part-{count:05d}"
        with path.open("wb") as out:
            size = reader.copy_to_delimiter(out)
        yield Part(path, _media_type(headers), size)


def _media_type(headers: bytes) -> str:
    message = Message()
    for line in headers.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            message[name.strip()] = value.strip()
    return message.get_content_type() if message.get("Content-Type") else ""


class _Reader:
    """The body as a buffer refilled from the stream, searched for the delimiter."""

    def __init__(self, stream: IO[bytes], delimiter: bytes) -> None:
        self.stream = stream
        self.delimiter = delimiter
        self.buffer = b""
        self.ended = False

    def _fill(self) -> bool:
        if self.ended:
            return False
        chunk = self.stream.read(CHUNK)
        if not chunk:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    def skip_to_delimiter(self) -> bool:
        """Drop everything up to and including the next delimiter (the preamble)."""
        while (at := self.buffer.find(self.delimiter)) < 0:
            self.buffer = self.buffer[-(len(self.delimiter) - 1) :]
            if not self._fill():
                return False
        self.buffer = self.buffer[at + len(self.delimiter) :]
        return True

    def read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise MultipartError("the body ends inside a boundary")
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def skip_line(self, start: bytes) -> None:
        """The rest of the delimiter's line (transport padding), through its CRLF."""
        self.buffer = start + self.buffer
        while (at := self.buffer.find(_CRLF)) < 0:
            if len(self.buffer) > 1024 or not self._fill():
                raise MultipartError("a boundary line does not end")
        self.buffer = self.buffer[at + 2 :]

    def read_headers(self) -> bytes:
        """The part's header lines (possibly none), up to the blank line."""
        first = self.read_exact(2)
        if first == _CRLF:
            return b""  # no headers at all
        self.buffer = first + self.buffer  # the start of the first header line
        while (at := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_PART_HEADERS:
                raise MultipartError(f"a part's headers exceed {MAX_PART_HEADERS} bytes")
            if not self._fill():
                raise MultipartError("the body ends inside a part's headers")
        headers, self.buffer = self.buffer[:at], self.buffer[at + 4 :]
        return headers

    def copy_to_delimiter(self, out: IO[bytes]) -> int:
        """Copy the part's bytes to `out` up to the next delimiter; return how many."""
        written = 0
        keep = len(self.delimiter) - 1  # a delimiter may straddle two chunks
        while (at := self.buffer.find(self.delimiter)) < 0:
            if len(self.buffer) > keep:
                out.write(self.buffer[:-keep])
                written += len(self.buffer) - keep
                self.buffer = self.buffer[-keep:]
            if not self._fill():
                raise MultipartError("the body ends before its closing boundary")
        out.write(self.buffer[:at])
        self.buffer = self.buffer[at + len(self.delimiter) :]
        return written + at
