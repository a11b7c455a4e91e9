"""What one input may cost before ingest reads, decodes or unpacks it.

A few KB can declare 65535 × 65535 pixels, a zip can unpack to terabytes, a member can claim
4 GiB, a symbolic link can point anywhere on the worker's disk. Each limit is a setting with
a safe default (`NEURONOVA_INGEST_MAX_*`); an input over one is quarantined with the limit and
its setting named in the reason, before anything large is read into memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from common.errors import IngestError

if TYPE_CHECKING:
    from common.settings import Settings

GiB = 1024**3
# What is kept of an input too large to keep whole: its first bytes, and the full hash.
QUARANTINE_HEAD_BYTES = 1024**2


@dataclass(frozen=True)
class IngestLimits:
    max_file_bytes: int = 2 * GiB
    max_zip_members: int = 100_000
    max_zip_total_bytes: int = 64 * GiB
    max_zip_ratio: int = 200  # uncompressed / compressed, per member
    max_pixel_bytes: int = 2 * GiB  # Rows × Columns × samples × bytes × frames, decoded
    max_frames: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        return cls(
            max_file_bytes=settings.ingest_max_file_bytes,
            max_zip_members=settings.ingest_max_zip_members,
            max_zip_total_bytes=settings.ingest_max_zip_total_bytes,
            max_zip_ratio=settings.ingest_max_zip_ratio,
            max_pixel_bytes=settings.ingest_max_pixel_bytes,
            max_frames=settings.ingest_max_frames,
        )


class OverLimit(IngestError):
    """An input over one of the limits; the reason names the limit and its setting."""

    def __init__(self, what: str, value: int, limit: int, setting: str) -> None:
        super().__init__(f"{what} {value} is over the limit {limit} (NEURONOVA_{setting})")


def check_pixel_budget(ds: Dataset, limits: IngestLimits) -> None:
    """Refuse an image whose declared pixels would be too large to decode, before decoding."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return
    frames = _int(ds.get("NumberOfFrames", 1)) or 1
    if frames > limits.max_frames:
        raise OverLimit("NumberOfFrames", frames, limits.max_frames, "INGEST_MAX_FRAMES")
    rows, columns = _int(ds.get("Rows", 0)), _int(ds.get("Columns", 0))
    samples = _int(ds.get("SamplesPerPixel", 1)) or 1
    bits = _int(ds.get("BitsAllocated", 16)) or 16
    decoded = rows * columns * samples * ((bits + 7) // 8) * frames
    if decoded > limits.max_pixel_bytes:
        raise OverLimit(
            "decoded pixel data (bytes)", decoded, limits.max_pixel_bytes, "INGEST_MAX_PIXEL_BYTES"
        )


def _int(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except (TypeError, ValueError):
        return 0
