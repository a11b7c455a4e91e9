"""Turn a DICOM dataset into HTJ2K Lossless, proving on the way that no pixel changed.

`transcode_to_htj2k` decodes the pixels with pydicom (any lossless transfer syntax: native
little or big endian, deflated, RLE, JPEG Lossless, JPEG-LS Lossless, JPEG 2000 Lossless),
encodes every frame with `tasks.dicom.htj2k`, decodes the codestreams again and compares every pixel
before it writes a Part 10 file with transfer syntax 1.2.840.10008.1.2.4.201. Everything but
the pixel data, and the few attributes that must describe the new encoding, is carried over.

What is kept as it is, and why (the `action` of the result):
- lossy transfer syntaxes, and any this module cannot decode losslessly: `kept_lossy`, never
  decoded and never called lossless;
- HTJ2K Lossless already: `already_htj2k`, after checking that every frame decodes;
- colour that HTJ2K cannot carry unchanged (YBR_FULL_422, YBR_PARTIAL_*, 2 or 4 samples):
  `kept_colour`;
- pixel data HTJ2K here cannot carry (Bits Allocated other than 8 or 16, float pixel data,
  overlays hidden in unused high bits): `kept_unsupported`;
- no pixel data at all (SR, presentation states): `no_pixels`.

Pixels are compared as pydicom decodes them without colour conversion (`raw=True`): YBR stays
YBR, and unused high bits are masked or sign-extended as PS3.5 §8.1.1 says.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels.decoders.base import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14

from common.errors import MalformedDicom, UnreadablePixelData, VerificationError
from tasks.dicom.htj2k import (
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_SYNTAXES,
    HTJ2K_LOSSY,
    HTJ2K_SYNTAXES,
    decode_frame,
    encode_frame,
    read_info,
)
from tasks.dicom.part10 import swap_words_to_little_endian, to_part10

logger = logging.getLogger(__name__)


class TranscodeAction(StrEnum):
    """What `transcode_to_htj2k` did; every action but TRANSCODED stores the input as it is."""

    TRANSCODED = "transcoded"
    ALREADY_HTJ2K = "already_htj2k"
    KEPT_LOSSY = "kept_lossy"
    KEPT_COLOUR = "kept_colour"
    KEPT_UNSUPPORTED = "kept_unsupported"
    NO_PIXELS = "no_pixels"


# Transfer syntaxes whose pixels pydicom decodes exactly as they were before encoding.
LOSSLESS_SOURCE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEGLosslessP14,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
    }
)
# Lossy, or allowed to be: kept as received whatever their pixels really are.
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
        HTJ2K_LOSSY,
    }
)
_VIDEO_SYNTAX_PREFIX = "1.2.840.10008.1.2.4.10"  # MPEG-2, MPEG-4 AVC and HEVC: .100 to .108
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float
_OFFSET_TABLE_TAGS = (0x7FE00001, 0x7FE00002)  # Extended Offset Table and its lengths
_PIXEL_DATA_TAG = 0x7FE00010
# Colour whose decoded samples HTJ2K stores unchanged without a colour transform (PS3.5
# §8.2.4); YBR_RCT is listed because JPEG 2000 decoding undoes it, giving RGB.
_TRANSCODABLE_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_RCT"})
_DECODED_COLOUR = frozenset({"RGB", "YBR_FULL"})
# Basic Offset Table entries are 32-bit; past this the Extended Offset Table is required.
_MAX_BOT_BYTES = 0xFFFFFFFF


@dataclass(frozen=True)
class TranscodeResult:
    """What `transcode_to_htj2k` made of one dataset, and what to store."""

    data: bytes  # the complete DICOM Part 10 file to store (with a correct file meta)
    transfer_syntax: str  # UID of `data`
    source_transfer_syntax: str
    action: TranscodeAction
    reason: str | None  # why it was kept as is (None when transcoded)
    lossless: bool  # pixels are exactly as acquired (or there are none); False once lossy
    pixel_sha256: str | None  # sha256 of the decoded pixels (see pixel_sha256); None if not decoded
    bytes_in: int  # size of the input file or dataset as received
    bytes_out: int  # len(data)


@dataclass(frozen=True)
class _PixelModule:
    """The Image Pixel attributes that say how to read and encode the pixel data."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one decoded frame, as pydicom returns it."""
        if self.samples == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples)


def transcode_to_htj2k(
    ds: Dataset, *, bytes_in: int, source: bytes | None = None
) -> TranscodeResult:
    """Return `ds` as an HTJ2K Lossless Part 10 file, or as it is with the reason why.

    `source`, the bytes `ds` was read from, enables the fast path for the common case
    (explicit VR little endian, monochrome, pixel data last): the new file is the original's
    bytes up to the pixel data, unchanged, followed by the encapsulated codestreams, instead
    of a re-serialisation of every attribute. `ds` itself is left unchanged.

    Raises UnreadablePixelData when the pixel data of a lossless transfer syntax cannot be
    decoded, and VerificationError if the HTJ2K copy does
    not decode to the very same pixels (which would be a codec bug).
    """
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise MalformedDicom("no SOP Class UID or SOP Instance UID: not a DICOM instance")
    source_ts = _transfer_syntax(ds)
    view = _shallow_copy(ds, source_ts)
    previously_lossy = str(ds.get("LossyImageCompression", "")).strip() == "01"

    if not any(tag in ds for tag in _PIXEL_TAGS):
        if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            raise UnreadablePixelData(
                "the Image Pixel module is present but there is no Pixel Data"
            )
        return _kept(
            view, source_ts, bytes_in, TranscodeAction.NO_PIXELS, "no pixel data", lossless=True
        )
    if source_ts not in LOSSLESS_SOURCE_SYNTAXES | HTJ2K_LOSSLESS_SYNTAXES:
        return _kept(
            view,
            source_ts,
            bytes_in,
            TranscodeAction.KEPT_LOSSY,
            _lossy_reason(source_ts),
            lossless=False,
        )

    module = _pixel_module(ds)
    if source_ts in HTJ2K_LOSSLESS_SYNTAXES:
        return _already_htj2k(view, module, source_ts, bytes_in, previously_lossy)

    unsupported = _unsupported_reason(ds, module)
    if unsupported:
        digest = pixel_sha256(_decode_reference(view, source_ts)[0])
        return _kept(
            view,
            source_ts,
            bytes_in,
            TranscodeAction.KEPT_UNSUPPORTED,
            unsupported,
            not previously_lossy,
            digest,
        )

    native = _native_pixels(ds, source_ts, module)
    if native is not None:
        pixels, photometric = native, module.photometric
    else:
        pixels, photometric = _decode_reference(view, source_ts)
    colour = _colour_reason(module, photometric)
    if colour:
        digest = pixel_sha256(pixels)
        return _kept(
            view,
            source_ts,
            bytes_in,
            TranscodeAction.KEPT_COLOUR,
            colour,
            not previously_lossy,
            digest,
        )

    frames = _as_frames(pixels, module)
    codestreams = _encode_frames(frames, module)
    _verify_codestreams(codestreams, frames)
    data = _splice_part10(ds, source, codestreams, module, photometric) if source else None
    if data is None:
        _set_htj2k_pixel_data(view, codestreams, module, photometric)
        if source_ts == ExplicitVRBigEndian:
            swap_words_to_little_endian(view)
        data = to_part10(view)
    return TranscodeResult(
        data=data,
        transfer_syntax=HTJ2K_LOSSLESS,
        source_transfer_syntax=str(source_ts),
        action=TranscodeAction.TRANSCODED,
        reason=None,
        lossless=not previously_lossy,
        pixel_sha256=pixel_sha256(frames),
        bytes_in=bytes_in,
        bytes_out=len(data),
    )


def verify_htj2k(data: bytes, expected_pixel_sha256: str) -> None:
    """Decode every frame of the HTJ2K Lossless file `data` and check the pixels' sha256.

    Raises VerificationError when `data` is not an HTJ2K Lossless DICOM file, cannot be
    decoded, or its pixels differ from those hashed into `expected_pixel_sha256`.
    """
    try:
        ds = dcmread(io.BytesIO(data))
        ts = _transfer_syntax(ds)
        if ts not in HTJ2K_LOSSLESS_SYNTAXES:
            raise VerificationError(f"transfer syntax is {ts} ({ts.name}), not HTJ2K Lossless")
        digest = pixel_sha256(decode_pixels(ds))
    except VerificationError:
        raise
    except Exception as err:
        raise VerificationError(f"HTJ2K copy cannot be read back: {err}") from err
    if digest != expected_pixel_sha256:
        raise VerificationError(
            f"HTJ2K copy decodes to pixels with sha256 {digest}, expected {expected_pixel_sha256}"
        )


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Decode all frames of `ds` to one array shaped and typed as pydicom's `pixel_array`.

    HTJ2K goes through `tasks.dicom.htj2k`; anything else through pydicom, without colour
    conversion (`raw=True`). The array is in native byte order. Raises UnreadablePixelData.
    """
    ts = _transfer_syntax(ds)
    if ts in HTJ2K_SYNTAXES:
        return _decode_htj2k(ds, _pixel_module(ds))[0]
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise UnreadablePixelData("the dataset has no pixel data")
    view = _shallow_copy(ds, ts)
    return _decode_reference(view, ts)[0]


def pixel_sha256(pixels: np.ndarray) -> str:
    """Return the sha256 of `pixels`' bytes in C order, little endian, in their own dtype."""
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(np.ascontiguousarray(little).data).hexdigest()


def _transfer_syntax(ds: Dataset) -> UID:
    """Return the transfer syntax `ds` is encoded in, from its file meta or how it was read."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = ds.original_encoding
    if (implicit, little) == (True, True):
        return ImplicitVRLittleEndian
    if (implicit, little) == (False, True):
        return ExplicitVRLittleEndian
    if (implicit, little) == (False, False):
        return ExplicitVRBigEndian
    raise MalformedDicom("the dataset has no Transfer Syntax UID and was not read from a file")


def _shallow_copy(ds: Dataset, ts: UID) -> Dataset:
    """Return a dataset that shares `ds`'s elements; replacing elements in it leaves `ds` alone."""
    view = Dataset(dict(ds.items()))
    implicit, little = ds.original_encoding
    view.set_original_encoding(implicit, little, ds.original_character_set)
    meta = getattr(ds, "file_meta", None)
    view.file_meta = _copy_meta(meta) if meta is not None else FileMetaDataset()
    view.file_meta.TransferSyntaxUID = ts
    return view


def _copy_meta(meta: FileMetaDataset) -> FileMetaDataset:
    """A copy whose elements may be changed in place (values are immutable; a deep copy of
    the whole group costs more than the HTJ2K encode of a CT slice)."""
    copied = FileMetaDataset()
    for tag in meta.keys():
        copied[tag] = copy.copy(meta[tag])
    return copied


def _pixel_module(ds: Dataset) -> _PixelModule:
    """Read and check the Image Pixel attributes, or raise UnreadablePixelData."""
    values: dict[str, int] = {}
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "PixelRepresentation",
        "SamplesPerPixel",
    ):
        value = ds.get(keyword)
        if value is None or value == "":
            raise UnreadablePixelData(f"the Image Pixel module lacks {keyword}")
        try:
            values[keyword] = int(value)
        except (TypeError, ValueError) as err:
            raise UnreadablePixelData(f"{keyword} {value!r} is not a number") from err
    frames_value = ds.get("NumberOfFrames")
    try:
        frames = 1 if frames_value in (None, "") else int(frames_value)
    except (TypeError, ValueError) as err:
        raise UnreadablePixelData(f"Number of Frames {frames_value!r} is not a number") from err
    module = _PixelModule(
        rows=values["Rows"],
        columns=values["Columns"],
        frames=frames,
        samples=values["SamplesPerPixel"],
        bits_allocated=values["BitsAllocated"],
        bits_stored=values["BitsStored"],
        signed=values["PixelRepresentation"] == 1,
        photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
    )
    if min(module.rows, module.columns, module.frames, module.samples, module.bits_stored) < 1:
        raise UnreadablePixelData(f"the Image Pixel module describes no pixels: {module}")
    if module.bits_stored > module.bits_allocated:
        raise UnreadablePixelData(
            f"Bits Stored {module.bits_stored} exceeds Bits Allocated {module.bits_allocated}"
        )
    return module


def _lossy_reason(ts: UID) -> str:
    """Say why pixels under `ts` are stored as they are."""
    if ts in LOSSY_SYNTAXES or ts.startswith(_VIDEO_SYNTAX_PREFIX):
        return (
            f"lossy transfer syntax {ts} ({ts.name}): stored as received, never relabelled lossless"
        )
    return f"transfer syntax {ts} ({ts.name}) has no lossless decoder here: stored as received"


def _unsupported_reason(ds: Dataset, module: _PixelModule) -> str | None:
    """Say why these pixels cannot go to HTJ2K here, or None when they can."""
    if 0x7FE00010 not in ds:
        return "float pixel data has no lossless HTJ2K encoding"
    if module.bits_allocated not in (8, 16):
        # 1-bit (bit-packed) and 32-bit data: pydicom's HTJ2K decoders cannot read them back.
        return f"Bits Allocated {module.bits_allocated} is not supported for HTJ2K (8 or 16 only)"
    if module.bits_stored < module.bits_allocated:
        for group in range(0x6000, 0x6020, 2):
            position = ds.get((group, 0x0102))
            if position is not None and (group, 0x3000) not in ds and position.value is not None:
                # Decoding masks the unused high bits, which would erase this overlay.
                return f"overlay {group:04X} lies in the unused high bits of the pixel data"
    return None


def _colour_reason(module: _PixelModule, decoded_photometric: str) -> str | None:
    """Say why this colour image stays as it is, or None when HTJ2K carries it unchanged."""
    if module.samples == 1:
        return None
    if module.samples != 3:
        return (
            f"{module.samples} samples per pixel ({module.photometric}) have no HTJ2K encoding here"
        )
    if module.photometric not in _TRANSCODABLE_COLOUR or decoded_photometric not in _DECODED_COLOUR:
        return (
            f"Photometric Interpretation {module.photometric} is chroma sub-sampled or not "
            "allowed with HTJ2K without changing pixel values"
        )
    return None


def _native_pixels(ds: Dataset, ts: UID, module: _PixelModule) -> np.ndarray | None:
    """Uncompressed little-endian pixels read straight from the Pixel Data bytes.

    Only where nothing needs masking, sign extension or byte swapping (Bits Stored equal to
    Bits Allocated, 8 or 16, one sample): then this is exactly what pydicom's decoder returns,
    without its per-call overhead, which is a fifth of a CT slice's transcode. None otherwise.
    """
    if (
        ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        or module.samples != 1
        or module.bits_allocated not in (8, 16)
        or module.bits_stored != module.bits_allocated
    ):
        return None
    # Read the element without converting it: conversion drops the file offset the splice needs.
    element = ds._dict.get(BaseTag(_PIXEL_DATA_TAG))
    data = element.value if element is not None else None
    dtype = np.dtype(f"<{'i' if module.signed else 'u'}{module.bits_allocated // 8}")
    count = module.frames * module.rows * module.columns
    expected = count * dtype.itemsize
    if not isinstance(data, bytes) or len(data) not in (expected, expected + expected % 2):
        return None  # odd lengths carry one pad byte; anything else is pydicom's to judge
    # A writable copy: the encoder binding refuses read-only arrays, and a copy costs ~50 µs.
    pixels = np.frombuffer(bytearray(data[:expected]), dtype=dtype, count=count)
    if module.frames == 1:
        return pixels.reshape(module.rows, module.columns)
    return pixels.reshape(module.frames, module.rows, module.columns)


def _decode_reference(view: Dataset, ts: UID) -> tuple[np.ndarray, str]:
    """Decode all frames with pydicom; return native-order pixels and their photometric."""
    # Frames beyond Number of Frames would make the copy disagree with its own header.
    options: dict[str, Any] = {"allow_excess_frames": False}
    try:
        pixels, properties = get_decoder(ts).as_array(view, raw=True, **options)
    except Exception as err:
        raise UnreadablePixelData(f"cannot decode the {ts.name} pixel data: {err}") from err
    pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
    return pixels, str(
        properties.get("photometric_interpretation", view.get("PhotometricInterpretation", ""))
    )


def _as_frames(pixels: np.ndarray, module: _PixelModule) -> np.ndarray:
    """Return `pixels` as (frames, rows, columns[, samples]), C-contiguous."""
    shape = (module.frames, *module.frame_shape)
    if pixels.size != int(np.prod(shape)):
        raise UnreadablePixelData(
            f"decoded {pixels.shape} pixels, the Image Pixel module says {shape}"
        )
    return np.ascontiguousarray(pixels).reshape(shape)


def _encode_frames(frames: np.ndarray, module: _PixelModule) -> list[bytes]:
    """Encode each frame; precision is Bits Stored unless the values need more."""
    precision = module.bits_stored
    if precision < module.bits_allocated and not _fits(frames, precision, module.signed):
        # Possible only for compressed sources whose codestream holds more bits than Bits
        # Stored says; keeping every bit matters more than the precision label.
        logger.warning(
            "pixel values exceed Bits Stored %d; encoding with %d bits to stay lossless",
            precision,
            module.bits_allocated,
        )
        precision = module.bits_allocated
    try:
        return [encode_frame(frame, precision) for frame in frames]
    except ValueError as err:
        raise UnreadablePixelData(f"cannot encode the pixel data as HTJ2K: {err}") from err


def _fits(pixels: np.ndarray, bits: int, signed: bool) -> bool:
    """Return whether every value of `pixels` fits in `bits` bits."""
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return bool(int(pixels.min()) >= low and int(pixels.max()) <= high)


def _verify_codestreams(codestreams: list[bytes], frames: np.ndarray) -> None:
    """Decode every codestream again and compare it with its frame, pixel for pixel."""
    decoded = np.empty_like(frames)
    for index, codestream in enumerate(codestreams):
        try:
            decode_frame(codestream, out=decoded[index])
        except ValueError as err:
            raise VerificationError(
                f"frame {index + 1}: our HTJ2K codestream does not decode: {err}"
            ) from err
    if not np.array_equal(decoded, frames):
        bad = [i + 1 for i in range(len(frames)) if not np.array_equal(decoded[i], frames[i])]
        raise VerificationError(f"HTJ2K round trip changed pixels in frame(s) {bad}")


def _set_htj2k_pixel_data(
    view: Dataset, codestreams: list[bytes], module: _PixelModule, photometric: str
) -> None:
    """Put the encapsulated codestreams and the attributes that describe them into `view`."""
    for tag in _OFFSET_TABLE_TAGS:
        if tag in view:
            del view[tag]
    total = sum(len(c) + len(c) % 2 + 8 for c in codestreams)
    if total > _MAX_BOT_BYTES:
        pixel_data, offsets, lengths = encapsulate_extended(codestreams)
        view[0x7FE00001] = DataElement(0x7FE00001, "OV", offsets)
        view[0x7FE00002] = DataElement(0x7FE00002, "OV", lengths)
    else:
        pixel_data = encapsulate(codestreams, has_bot=True)
    view[0x7FE00010] = DataElement(0x7FE00010, "OB", pixel_data, is_undefined_length=True)
    if module.samples > 1:
        # Decoded colour is always pixel-interleaved; the RCT is never applied (see htj2k).
        view[0x00280006] = DataElement(0x00280006, "US", 0)
        if photometric != module.photometric:
            view[0x00280004] = DataElement(0x00280004, "CS", photometric)
    view.file_meta.TransferSyntaxUID = UID(HTJ2K_LOSSLESS)
    # We write this file: the implementation fields name the writer (PS3.10 §7.1).
    view.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if "ImplementationVersionName" in view.file_meta:
        del view.file_meta.ImplementationVersionName


def _splice_part10(
    ds: Dataset,
    source: bytes,
    codestreams: list[bytes],
    module: _PixelModule,
    photometric: str,
) -> bytes | None:
    """The HTJ2K file built from `source`'s own bytes, or None when the fast path does not apply.

    Applies when nothing but the pixel data and the file meta change: explicit VR little
    endian, one sample per pixel, no offset tables, and Pixel Data the last element, ending
    the file. The result is what `to_part10` writes for such input, without re-encoding
    every attribute (about half of a transcode's time).
    """
    pixel = ds._dict.get(BaseTag(_PIXEL_DATA_TAG))
    meta = getattr(ds, "file_meta", None)
    if (
        meta is None
        or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian
        or module.samples != 1
        or photometric != module.photometric
        or any(tag in ds for tag in _OFFSET_TABLE_TAGS)
        or max(ds.keys()) != _PIXEL_DATA_TAG
        or not isinstance(pixel, RawDataElement)
        or pixel.value_tell is None
        or pixel.value_tell + pixel.length != len(source)
        or source[128:132] != b"DICM"
        or "FileMetaInformationGroupLength" not in meta
    ):
        return None
    dataset_start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    pixel_start = pixel.value_tell - 12  # tag, VR, reserved, 4-byte length (explicit VR OB/OW)
    if dataset_start >= pixel_start or source[dataset_start : dataset_start + 2] == b"\x02\x00":
        return None
    if sum(len(c) + len(c) % 2 + 8 for c in codestreams) > _MAX_BOT_BYTES:
        return None  # needs the Extended Offset Table: the general path writes it
    encapsulated = encapsulate(codestreams, has_bot=True)
    new_meta = _copy_meta(meta)
    new_meta.TransferSyntaxUID = UID(HTJ2K_LOSSLESS)
    new_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if "ImplementationVersionName" in new_meta:
        del new_meta.ImplementationVersionName
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(bytes(128) + b"DICM")
    write_file_meta_info(out, new_meta, enforce_standard=True)
    out.write(source[dataset_start:pixel_start])
    out.write(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")  # (7FE0,0010) OB, undefined length
    out.write(encapsulated)
    out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # sequence delimitation item
    return out.getvalue()


def _already_htj2k(
    view: Dataset, module: _PixelModule, ts: UID, bytes_in: int, previously_lossy: bool
) -> TranscodeResult:
    """Check that every frame of an HTJ2K Lossless dataset decodes, and keep it."""
    pixels, reversible = _decode_htj2k(view, module)
    irreversible = not reversible
    reason = "already HTJ2K Lossless"
    if irreversible:
        reason = "already HTJ2K, but a codestream uses the irreversible wavelet: not lossless"
    lossless = not previously_lossy and not irreversible
    return _kept(
        view, ts, bytes_in, TranscodeAction.ALREADY_HTJ2K, reason, lossless, pixel_sha256(pixels)
    )


def _frames_of(ds: Dataset, module: _PixelModule) -> list[bytes]:
    """Split encapsulated pixel data into one codestream per frame."""
    offsets = None
    if 0x7FE00001 in ds and 0x7FE00002 in ds:
        offsets = (ds[0x7FE00001].value, ds[0x7FE00002].value)
    try:
        frames = list(
            generate_frames(ds.PixelData, number_of_frames=module.frames, extended_offsets=offsets)
        )
    except Exception as err:
        raise UnreadablePixelData(
            f"encapsulated pixel data cannot be split into frames: {err}"
        ) from err
    if len(frames) != module.frames:
        raise UnreadablePixelData(
            f"found {len(frames)} frames of HTJ2K data, Number of Frames is {module.frames}"
        )
    return frames


def _decode_htj2k(ds: Dataset, module: _PixelModule) -> tuple[np.ndarray, bool]:
    """Decode every HTJ2K frame of `ds` as pydicom would shape and sign it.

    Also returns whether every codestream is reversible (lossless).
    """
    if module.bits_allocated not in (8, 16):
        raise UnreadablePixelData(
            f"Bits Allocated {module.bits_allocated} is not supported for HTJ2K"
        )
    dtype = np.dtype(f"{'i' if module.signed else 'u'}{module.bits_allocated // 8}")
    pixels = np.empty((module.frames, *module.frame_shape), dtype=dtype)
    reversible = True
    for index, frame in enumerate(_frames_of(ds, module)):
        try:
            info = read_info(frame)
            decode_frame(frame, out=pixels[index])
        except ValueError as err:
            raise UnreadablePixelData(f"HTJ2K frame {index + 1} of {module.frames}: {err}") from err
        reversible = reversible and info.reversible
        shift = module.bits_allocated - info.precision
        if info.signed != module.signed and shift > 0 and module.samples == 1:
            # Same correction as pydicom: a codestream whose signedness contradicts Pixel
            # Representation is re-read with the sign bit at the codestream's precision.
            np.left_shift(pixels[index], shift, out=pixels[index])
            np.right_shift(pixels[index], shift, out=pixels[index])
    return (pixels[0] if module.frames == 1 else pixels), reversible


def _kept(
    view: Dataset,
    ts: UID,
    bytes_in: int,
    action: TranscodeAction,
    reason: str,
    lossless: bool,
    digest: str | None = None,
) -> TranscodeResult:
    """Return the dataset re-serialised in its own transfer syntax, with why it was kept."""
    data = to_part10(view)
    return TranscodeResult(
        data=data,
        transfer_syntax=str(ts),
        source_transfer_syntax=str(ts),
        action=action,
        reason=reason,
        lossless=lossless,
        pixel_sha256=digest,
        bytes_in=bytes_in,
        bytes_out=len(data),
    )
