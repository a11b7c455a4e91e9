"""WADO-RS retrieve as PS3.18 says, for any DICOMweb client: which transfer syntax a request
accepts, and the DICOM instances and frames the gate builds itself in explicit VR little endian
(the default PS3.18 gives when a client names none) from the HTJ2K the archive keeps.

Frames are always the gate's own answer: Orthanc's DICOMweb plugin cannot serve frames of HTJ2K
(1.10 labels the codestream explicit little endian, and a viewer that trusts the label draws
noise; 1.12 answers 500), so the gate takes each frame as stored from Orthanc's core API
(`/instances/{id}/frames/{n}/raw`) and labels it with the syntax the archive index records, or
decodes it. Series and studies are the gate's own answer too (streamed, only what the index
places in the study); a single instance as stored still goes through nginx.

Negotiation (`answer_syntax`), for `multipart/related` of `application/dicom` (instances,
series, studies) or of `application/octet-stream` (frames):
- no Accept, `*/*`, `transfer-syntax=*` or the stored syntax: as stored (nothing decoded);
- no `transfer-syntax` parameter, or explicit VR little endian: decoded into explicit VR little
  endian (lossless: HTJ2K is stored reversibly, and the decode is exact);
- anything else: 406, naming what can be had.
"""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tasks.dicom.part10 import to_part10
from tasks.dicom.transcode import decode_pixels

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
EXPLICIT_LE = str(ExplicitVRLittleEndian)
AS_STORED = "*"
_MEDIA_RANGE = re.compile(r"\s*([^;,\s]+)\s*((?:;[^,]*)?)")
_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*("[^"]*"|[^;\s]*)')
# Encapsulation-only attributes that an uncompressed copy must not carry (extended offsets).
_ENCAPSULATION_TAGS = (0x7FE00001, 0x7FE00002)


class NotAcceptable(Exception):
    """The client accepts no form the gate can produce; the message says which it can."""

    def __init__(self, stored: str, part_type: str, *, decodable: bool = True) -> None:
        decoded = f", or {EXPLICIT_LE} (decoded)" if decodable else ""
        super().__init__(
            f'kept as {stored}; accept multipart/related; type="{part_type}" with '
            f"transfer-syntax=* (as stored), {stored}{decoded}"
        )


def answer_syntax(accept: str, stored: str, part_type: str, *, decodable: bool = True) -> str:
    """The transfer syntax to answer in: `stored` (as kept) or explicit VR little endian
    (decoded, when `decodable`: the archive's own HTJ2K); NotAcceptable when no media range of
    `accept` allows either."""
    if not accept.strip():
        return stored
    for media_type, params in media_ranges(accept):
        if media_type == "*/*":
            return stored
        if media_type not in ("multipart/related", "multipart/*"):
            continue
        if params.get("type", part_type) not in (part_type, "*/*"):
            continue
        wanted = params.get("transfer-syntax", EXPLICIT_LE)
        if wanted in (AS_STORED, stored):
            return stored
        if wanted == EXPLICIT_LE and decodable:
            return EXPLICIT_LE
    raise NotAcceptable(stored, part_type, decodable=decodable)


def media_ranges(accept: str) -> Iterable[tuple[str, dict[str, str]]]:
    """Each media range of an Accept header with its parameters (quotes removed)."""
    for match in _MEDIA_RANGE.finditer(accept):
        params = {name.lower(): value.strip('"') for name, value in _PARAM.findall(match.group(2))}
        yield match.group(1).lower(), params


# --------------------------------------------------------------------------- decoding


def explicit_le_instance(stored_file: bytes) -> bytes:
    """The stored file as explicit VR little endian: every frame decoded (as pydicom shapes
    and signs it), written native, the rest of the dataset as it is."""
    ds = _read(stored_file)
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return to_part10(ds)
    pixels = decode_pixels(ds)
    native = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False))
    for tag in _ENCAPSULATION_TAGS:
        if tag in ds:
            del ds[tag]
    ds.PixelData = native.tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0  # decoded frames are interleaved (rows, columns, samples)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)
    return to_part10(ds)


def explicit_le_frames(stored_file: bytes, numbers: Iterable[int]) -> list[bytes]:
    """Frames (numbered from 1) of the stored file, decoded, as native little-endian bytes."""
    ds = _read(stored_file)
    pixels = decode_pixels(ds)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1:
        pixels = pixels[np.newaxis]
    answer = []
    for number in numbers:
        if not 1 <= number <= frames:
            raise IndexError(f"frame {number} of {frames}")
        frame = pixels[number - 1]
        answer.append(frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes())
    return answer


def _read(stored_file: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(stored_file))


# --------------------------------------------------------------------------- multipart


@dataclass(frozen=True)
class Multipart:
    """A multipart/related answer's boundary and Content-Type."""

    part_type: str
    boundary: str

    @classmethod
    def new(cls, part_type: str) -> Multipart:
        return cls(part_type, f"neuronova-{secrets.token_hex(12)}")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def part(self, body: bytes, transfer_syntax: str) -> Iterator[bytes]:
        """One part: its header, its body, its end (three pieces: no copy of the body)."""
        header = f"--{self.boundary}\r\nContent-Type: {self.part_type}; transfer-syntax="
        yield f"{header}{transfer_syntax}\r\n\r\n".encode()
        yield body
        yield b"\r\n"

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def whole(self, parts: Iterable[tuple[bytes, str]]) -> bytes:
        """The answer in one piece (small answers: frames)."""
        pieces = [piece for body, syntax in parts for piece in self.part(body, syntax)]
        return b"".join([*pieces, self.end()])
