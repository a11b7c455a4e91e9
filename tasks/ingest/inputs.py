"""Where ingest reads from: a file, a folder (recursively) or a zip archive, never modified.

Bounded (`tasks.ingest.limits`): symbolic links are listed but never followed (one could
point anywhere on the worker's disk); a file or zip member over its size limit, a zip member
that unpacks more than `max_zip_ratio` times its stored size, and an archive with too many
members or too many bytes in all are refused before their content is read, with the limit
named. What such an input keeps in quarantine is its first bytes and its full hash.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from common.errors import IngestError
from tasks.ingest.limits import QUARANTINE_HEAD_BYTES, IngestLimits, OverLimit

_CHUNK = 1024**2


@dataclass(frozen=True, order=True)
class InputRef:
    """One input instance: a file, or a member of a zip archive."""

    path: str
    member: str | None = None
    # Why it will not be read, found while listing (an archive over a limit); None if fine.
    refusal: str | None = field(default=None, compare=False)

    @property
    def display(self) -> str:
        """How reports name it: `archive.zip!member` for zip members."""
        return f"{self.path}!{self.member}" if self.member else self.path

    @property
    def name(self) -> str:
        return Path(self.member or self.path).name


class Oversized(IngestError):
    """An input over a size limit, with what quarantine keeps of it: its first bytes and, for
    a file, the hash of the whole (a zip member is not unpacked further)."""

    def __init__(self, over: OverLimit, head: bytes, full_sha256: str | None) -> None:
        whole = f"sha256 of the whole {full_sha256}" if full_sha256 else "not unpacked further"
        super().__init__(f"{over} (kept its first {len(head)} bytes; {whole})")
        self.head = head


def collect_inputs(path: Path, limits: IngestLimits | None = None) -> list[InputRef]:
    """Every candidate instance under `path`, in a stable order; links are not followed."""
    limits = limits or IngestLimits()
    if not path.exists() and not path.is_symlink():
        raise IngestError(f"input not found: {path}")
    if path.is_dir() and not path.is_symlink():
        refs: list[InputRef] = []
        for folder, dirs, files in os.walk(path, followlinks=False):
            dirs.sort()
            for name in sorted(files + [d for d in dirs if os.path.islink(Path(folder, d))]):
                refs.extend(_refs_for_file(Path(folder, name), limits))
        return sorted(refs)
    return _refs_for_file(path, limits)


def _refs_for_file(path: Path, limits: IngestLimits) -> list[InputRef]:
    if path.is_symlink() or path.suffix.lower() != ".zip" or not zipfile.is_zipfile(path):
        return [InputRef(str(path))]
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
    refusal = _archive_refusal(members, limits)
    if refusal is not None:
        return [InputRef(str(path), refusal=refusal)]
    return [InputRef(str(path), info.filename) for info in members]


def _archive_refusal(members: list[zipfile.ZipInfo], limits: IngestLimits) -> str | None:
    if len(members) > limits.max_zip_members:
        over = OverLimit(
            "zip members", len(members), limits.max_zip_members, "INGEST_MAX_ZIP_MEMBERS"
        )
        return str(over)
    total = sum(info.file_size for info in members)
    if total > limits.max_zip_total_bytes:
        over = OverLimit(
            "zip content (bytes)", total, limits.max_zip_total_bytes, "INGEST_MAX_ZIP_TOTAL_BYTES"
        )
        return str(over)
    return None


def read_input(ref: InputRef, limits: IngestLimits | None = None) -> bytes:
    """The bytes of one input, within the limits (IngestError or Oversized otherwise)."""
    limits = limits or IngestLimits()
    if ref.refusal is not None:
        raise IngestError(ref.refusal)  # found while listing; nothing of it is read
    if ref.member is None:
        return _read_file(Path(ref.path), limits)
    with zipfile.ZipFile(ref.path) as archive:
        info = archive.getinfo(ref.member)
        ratio = info.file_size // max(info.compress_size, 1)
        over = None
        if info.file_size > _CHUNK and ratio > limits.max_zip_ratio:
            over = OverLimit(
                "zip member compression ratio", ratio, limits.max_zip_ratio, "INGEST_MAX_ZIP_RATIO"
            )
        elif info.file_size > limits.max_file_bytes:
            over = OverLimit(
                "zip member (bytes)", info.file_size, limits.max_file_bytes, "INGEST_MAX_FILE_BYTES"
            )
        if over is not None:
            with archive.open(info) as member:
                raise Oversized(over, member.read(QUARANTINE_HEAD_BYTES), None)
        return archive.read(info)


def _read_file(path: Path, limits: IngestLimits) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if path.is_symlink():
            raise IngestError("a symbolic link: not followed (copy the file itself)") from None
        raise IngestError(f"cannot open: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IngestError("not a regular file")
        if info.st_size > limits.max_file_bytes:
            over = OverLimit(
                "file size (bytes)", info.st_size, limits.max_file_bytes, "INGEST_MAX_FILE_BYTES"
            )
            raise _oversized(over, handle)
        return handle.read()


def _oversized(over: OverLimit, handle: BinaryIO) -> Oversized:
    """The refusal with what quarantine keeps: the first bytes, and the hash of the whole file
    (streamed from disk, never held)."""
    digest = hashlib.sha256()
    head = handle.read(QUARANTINE_HEAD_BYTES)
    digest.update(head)
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return Oversized(over, head, digest.hexdigest())
