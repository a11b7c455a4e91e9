"""A `multipart/related` body (STOW-RS, PS3.18 §8.6.1) split into one file per part, read
as a stream: a study of a gigabyte never sits in memory, only one chunk and a boundary's
length of look-behind.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Protocol

CHUNK = 1 << 20
MAX_PART_HEADERS = 16 * 1024  # bytes of headers per part (a few lines in practice)
_CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not the multipart/related it claims to be (the message says where)."""


class Readable(Protocol):
    """What a body is read from: a request's stream, an upstream answer."""

    def read(self, size: int, /) -> bytes: ...


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
    stream: Readable, boundary: bytes, folder: Path, *, max_parts: int
) -> Iterator[Part]:
    """Write each part of the body into `folder` (part-00001, …) and yield it once complete.

    Raises MultipartError for a body that ends before its closing boundary, a part whose
    headers are too long, or more than `max_parts` parts.
    """
    for count, (headers, reader) in enumerate(_parts(stream, boundary, max_parts), 1):
        path = folder / f"part-{count:05d}"
        with path.open("wb") as out:
            size = reader.copy_to_delimiter(out)
        yield Part(path, _media_type(headers), size)


def read_parts(
    stream: Readable, boundary: bytes, *, max_parts: int, chunk: int = 0
) -> Iterator[bytes]:
    """Each part's bytes, in memory, as soon as it is complete (answers of our own archive,
    one instance a part), read `chunk` bytes at a time; the same errors as `split_parts`."""
    for _headers, reader in _parts(stream, boundary, max_parts, chunk):
        out = io.BytesIO()
        reader.copy_to_delimiter(out)
        yield out.getvalue()


def _parts(
    stream: Readable, boundary: bytes, max_parts: int, chunk: int = 0
) -> Iterator[tuple[bytes, _Reader]]:
    """Each part's headers, with the reader positioned at its first byte (the caller reads the
    part to its delimiter before asking for the next)."""
    reader = _Reader(stream, b"\r\n--" + boundary, chunk)
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
            raise MultipartError(f"more than {max_parts} parts in one body")
        yield reader.read_headers(), reader


def _media_type(headers: bytes) -> str:
    message = Message()
    for line in headers.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            message[name.strip()] = value.strip()
    return message.get_content_type() if message.get("Content-Type") else ""


class _Reader:
    """The body as a buffer refilled from the stream, searched for the delimiter."""

    def __init__(self, stream: Readable, delimiter: bytes, chunk: int = 0) -> None:
        self.stream = stream
        self.delimiter = delimiter
        # Bytes read per fill; 0: the module's CHUNK, read at fill time (the tests change it).
        self.chunk = chunk
        self.buffer = b""
        self.ended = False

    def _fill(self) -> bool:
        if self.ended:
            return False
        chunk = self.stream.read(self.chunk or CHUNK)
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
