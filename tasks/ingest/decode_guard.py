"""A file that kills the decoder is decoded once, not on every retry.

A decoder that crashes (a segfault in a codec, the kernel's OOM killer) takes the worker with
it: no exception, no quarantine, and Prefect's retry or the next run would feed it the same
file again. So each input is marked on disk while it is decoded and unmarked after; a mark
found before decoding means an earlier attempt died there, and the input is quarantined
instead of decoded again. The marks of inputs that were being decoded beside it in the same
process are found too: those few are quarantined as well (kept, with the reason; ingest them
again once the culprit is known).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.ingest.inputs import InputRef

CRASHED = (
    "an earlier attempt died while decoding it (a decoder crash or the memory killer): "
    "not decoded again"
)


class DecodeGuard:
    """Marks under `folder`, one per input being decoded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def crashed_before(self, ref: InputRef) -> bool:
        """Whether an earlier attempt left its mark: it died decoding this input."""
        return self._mark(ref).exists()

    def forget(self, ref: InputRef) -> None:
        """Drop a mark once its input is quarantined (a later, deliberate ingest tries again)."""
        self._mark(ref).unlink(missing_ok=True)

    @contextmanager
    def decoding(self, ref: InputRef) -> Iterator[None]:
        """Mark the input for as long as it is decoded; the mark stays only if we die."""
        mark = self._mark(ref)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # No fsync: what this guards against is the process dying, and the kernel keeps what
        # a dead process wrote (only a power cut would lose the mark, and the file with it).
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, ref.display.encode(errors="replace"))
        finally:
            os.close(fd)
        try:
            yield
        finally:
            mark.unlink(missing_ok=True)

    def _mark(self, ref: InputRef) -> Path:
        return self.folder / hashlib.sha256(ref.display.encode(errors="replace")).hexdigest()
