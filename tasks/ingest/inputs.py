"""Where ingest reads from: a file, a folder (recursively) or a zip archive, never modified."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from common.errors import IngestError

# A zip member larger than this is refused before it is read (a zip bomb guard).
MAX_MEMBER_BYTES = 4 * 1024**3


@dataclass(frozen=True, order=True)
class InputRef:
    """One input instance: a file, or a member of a zip archive."""

    path: str
    member: str | None = None

    @property
    def display(self) -> str:
        """How reports name it: `archive.zip!member` for zip members."""
        return f"{self.path}!{self.member}" if self.member else self.path

    @property
    def name(self) -> str:
        return Path(self.member or self.path).name


def collect_inputs(path: Path) -> list[InputRef]:
    """Every candidate instance under `path`, in a stable order."""
    if not path.exists():
        raise IngestError(f"input not found: {path}")
    if path.is_dir():
        refs: list[InputRef] = []
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            refs.extend(_refs_for_file(child))
        return refs
    return _refs_for_file(path)


def _refs_for_file(path: Path) -> list[InputRef]:
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [
                InputRef(str(path), info.filename)
                for info in archive.infolist()
                if not info.is_dir()
            ]
    return [InputRef(str(path))]


def read_input(ref: InputRef) -> bytes:
    """The bytes of one input."""
    if ref.member is None:
        return Path(ref.path).read_bytes()
    with zipfile.ZipFile(ref.path) as archive:
        info = archive.getinfo(ref.member)
        if info.file_size > MAX_MEMBER_BYTES:
            raise IngestError(f"zip member too large ({info.file_size} bytes)")
        return archive.read(info)
