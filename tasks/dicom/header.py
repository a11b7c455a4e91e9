"""A few top-level attributes of a Part 10 file, read without building a pydicom Dataset.

Assembling a volume needs a handful of values per slice (position, orientation, size, spacing,
UIDs); pydicom parses every element into objects first, which costs about a millisecond per
file here, more than decoding its HTJ2K frame. This scanner walks the explicit VR little endian
elements, keeps the wanted ones as strings (as Orthanc's simplified tags give them) and skips
the rest, sequences included. Anything it does not expect (implicit VR, big endian, deflate, a
truncated element) gives None, and the caller uses pydicom instead.
"""

from __future__ import annotations

import struct

WANTED = {
    (0x0002, 0x0010): "TransferSyntaxUID",
    (0x0008, 0x0018): "SOPInstanceUID",
    (0x0020, 0x0032): "ImagePositionPatient",
    (0x0020, 0x0037): "ImageOrientationPatient",
    (0x0028, 0x0002): "SamplesPerPixel",
    (0x0028, 0x0008): "NumberOfFrames",
    (0x0028, 0x0010): "Rows",
    (0x0028, 0x0011): "Columns",
    (0x0028, 0x0030): "PixelSpacing",
    (0x0028, 0x0100): "BitsAllocated",
    (0x0028, 0x0103): "PixelRepresentation",
    (0x0028, 0x1052): "RescaleIntercept",
    (0x0028, 0x1053): "RescaleSlope",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}  # fmt: skip
_EXPLICIT_LE = {"1.2.840.10008.1.2.1"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)


class _Unexpected(Exception):
    """The file is not in the shape this scanner reads."""


def scan_header(blob: bytes) -> dict[str, str] | None:
    """The WANTED attributes present at the top level of `blob`, or None (use pydicom)."""
    try:
        if blob[128:132] != b"DICM":
            return None
        found: dict[str, str] = {}
        position = _walk(blob, 132, found, meta_only=True)
        syntax = found.get("TransferSyntaxUID", "")
        # Encapsulated syntaxes (HTJ2K, JPEG …) encode the dataset as explicit VR LE too.
        if (
            syntax.startswith("1.2.840.10008.1.2.4.")
            or syntax in _EXPLICIT_LE
            or syntax == "1.2.840.10008.1.2.5"
        ):
            _walk(blob, position, found, meta_only=False)
            return found
        return None
    except (_Unexpected, struct.error, IndexError, UnicodeDecodeError):
        return None


def _walk(blob: bytes, position: int, found: dict[str, str], *, meta_only: bool) -> int:
    """Read elements from `position`; return where it stopped (end of meta, or pixel data)."""
    end = len(blob)
    while position + 8 <= end:
        group, element = struct.unpack_from("<HH", blob, position)
        if meta_only and group != 0x0002:
            return position
        if (group, element) == _PIXEL_DATA:
            return position
        vr = blob[position + 4 : position + 6]
        if not vr.isalpha() or not vr.isupper():
            raise _Unexpected("not explicit VR")
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", blob, position + 8)
            value_at = position + 12
        else:
            (length,) = struct.unpack_from("<H", blob, position + 6)
            value_at = position + 8
        if length == _UNDEFINED:
            if vr not in (b"SQ", b"UN"):
                raise _Unexpected("undefined length outside a sequence")
            position = _skip_undefined_sequence(blob, value_at)
            continue
        if value_at + length > end:
            raise _Unexpected("truncated element")
        name = WANTED.get((group, element))
        if name is not None:
            found[name] = _value(vr, blob[value_at : value_at + length])
        position = value_at + length
    if position != end:
        raise _Unexpected("bytes left over after the last element")
    return position


def _skip_undefined_sequence(blob: bytes, position: int) -> int:
    """Past the sequence delimiter of an undefined-length sequence starting at `position`."""
    depth = 1  # nested sequences and items of undefined length are tracked by delimiters
    while position + 8 <= len(blob):
        group, element = struct.unpack_from("<HH", blob, position)
        tag = (group, element)
        if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
            (length,) = struct.unpack_from("<I", blob, position + 4)
            position += 8
            if tag == _ITEM and length != _UNDEFINED:
                position += length
            elif tag == _ITEM and length == _UNDEFINED:
                depth += 1
            elif tag == _ITEM_END:
                depth -= 1
            else:  # the sequence delimiter
                depth -= 1
                if depth == 0:
                    return position
            continue
        vr = blob[position + 4 : position + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", blob, position + 8)
            position += 12
        else:
            (length,) = struct.unpack_from("<H", blob, position + 6)
            position += 8
        if length == _UNDEFINED:
            depth += 1  # a nested undefined-length sequence: its delimiter closes it
        else:
            position += length
    raise _Unexpected("a sequence without its delimiter")


def _value(vr: bytes, raw: bytes) -> str:
    if vr == b"US":
        return "\\".join(str(v) for v in struct.unpack(f"<{len(raw) // 2}H", raw))
    if vr == b"UL":
        return "\\".join(str(v) for v in struct.unpack(f"<{len(raw) // 4}I", raw))
    return raw.decode("ascii").rstrip("\x00 ").strip()
