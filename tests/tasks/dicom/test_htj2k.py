"""The HTJ2K frame codec: bit-exact round trips, the header DICOM needs, and refusals."""

from __future__ import annotations

import ctypes

import numpy as np
import openjpeg
import pytest
from ojph.ojph_bindings import Codestream, MemOutfile, Point

from tasks.dicom.htj2k import decode_frame, encode_frame, read_info
from tests.support.dicom_factory import make_pixels

# dtype, bits stored, shape (rows, columns[, 3]), pattern
ROUND_TRIPS = [
    ("i2", 16, (64, 64), "noise"),
    ("u2", 16, (64, 64), "noise"),
    ("u1", 8, (64, 64), "noise"),
    ("i1", 8, (64, 64), "noise"),
    ("u2", 12, (64, 64), "noise"),
    ("i2", 12, (64, 64), "noise"),
    ("i2", 14, (128, 96), "smooth"),
    ("u2", 10, (128, 96), "smooth"),
    ("u1", 6, (20, 30), "noise"),
    ("i2", 16, (37, 61), "noise"),
    ("u2", 12, (1, 257), "noise"),
    ("u2", 12, (257, 1), "noise"),
    ("i2", 16, (1, 1), "noise"),
    ("u2", 16, (40, 40), "constant"),
    ("u1", 8, (37, 61, 3), "noise"),
    ("u1", 8, (64, 64, 3), "smooth"),
    ("u2", 16, (33, 17, 3), "noise"),
    ("u2", 12, (33, 17, 3), "noise"),
]


def _frame(
    dtype: str, bits: int, shape: tuple[int, ...], pattern: str, seed: int = 0
) -> np.ndarray:
    """A frame of `shape` whose values span `bits` bits of `dtype`."""
    pixels = make_pixels(
        shape[0],
        shape[1],
        bits_allocated=np.dtype(dtype).itemsize * 8,
        bits_stored=bits,
        signed=dtype.startswith("i"),
        samples=shape[2] if len(shape) == 3 else 1,
        pattern=pattern,  # type: ignore[arg-type]
        seed=seed,
    )
    assert pixels.shape == shape and pixels.dtype == np.dtype(dtype)
    return pixels


@pytest.mark.parametrize(("dtype", "bits", "shape", "pattern"), ROUND_TRIPS)
def test_round_trip_is_bit_exact(
    dtype: str, bits: int, shape: tuple[int, ...], pattern: str
) -> None:
    frame = _frame(dtype, bits, shape, pattern)
    decoded = decode_frame(encode_frame(frame, bits))
    assert decoded.dtype == frame.dtype
    np.testing.assert_array_equal(decoded, frame)


@pytest.mark.parametrize(("dtype", "bits", "shape", "pattern"), ROUND_TRIPS)
def test_header_precision_is_bits_stored(
    dtype: str, bits: int, shape: tuple[int, ...], pattern: str
) -> None:
    info = read_info(encode_frame(_frame(dtype, bits, shape, pattern), bits))
    assert (info.rows, info.columns) == shape[:2]
    assert info.components == (shape[2] if len(shape) == 3 else 1)
    assert info.precision == bits
    assert info.signed == dtype.startswith("i")
    assert info.reversible and not info.colour_transform


@pytest.mark.parametrize(("dtype", "bits", "shape", "pattern"), ROUND_TRIPS)
def test_openjpeg_decodes_our_codestream_identically(
    dtype: str, bits: int, shape: tuple[int, ...], pattern: str
) -> None:
    frame = _frame(dtype, bits, shape, pattern)
    np.testing.assert_array_equal(openjpeg.decode(encode_frame(frame, bits)), frame)


def test_negative_values_survive_below_bits_allocated() -> None:
    frame = np.array([[-2048, -1, 0, 2047], [-1024, 5, -7, 1]], dtype=np.int16)
    np.testing.assert_array_equal(decode_frame(encode_frame(frame, 12)), frame)


def test_decodes_into_a_slice_of_a_volume() -> None:
    frames = [_frame("i2", 16, (32, 48), "noise", seed) for seed in range(3)]
    volume = np.zeros((3, 32, 48), dtype=np.int16)
    for index, frame in enumerate(frames):
        decoded = decode_frame(encode_frame(frame, 16), out=volume[index])
        assert np.shares_memory(decoded, volume)
    np.testing.assert_array_equal(volume, np.stack(frames))


def test_decodes_colour_into_a_slice_of_a_volume() -> None:
    frame = _frame("u1", 8, (16, 24, 3), "noise")
    volume = np.zeros((2, 16, 24, 3), dtype=np.uint8)
    decode_frame(encode_frame(frame, 8), out=volume[1])
    np.testing.assert_array_equal(volume[1], frame)


def test_big_endian_and_strided_input_encode_their_values() -> None:
    frame = _frame("i2", 16, (40, 40), "noise")
    big_endian = frame.astype(">i2")
    np.testing.assert_array_equal(decode_frame(encode_frame(big_endian, 16)), frame)
    np.testing.assert_array_equal(
        decode_frame(encode_frame(frame[::2, ::-1], 16)), frame[::2, ::-1]
    )


def test_colour_transformed_codestream_decodes_correctly() -> None:
    # ojph's pull_all_components mis-orders RCT codestreams; ours pulls them interleaved.
    frame = _frame("u1", 8, (21, 35, 3), "noise")
    codestream = _encode_with_rct(frame)
    np.testing.assert_array_equal(openjpeg.decode(codestream), frame)  # a valid reference
    assert read_info(codestream).colour_transform
    np.testing.assert_array_equal(decode_frame(codestream), frame)


# frame, bits stored, what the message says
BAD_FRAMES = [
    (np.zeros((8, 8), np.float32), 16, "dtype"),
    (np.zeros((8, 8), np.int32), 16, "dtype"),
    (np.zeros((2, 8, 8), np.uint16), 16, "shape"),
    (np.zeros((8, 8, 4), np.uint8), 8, "shape"),
    (np.zeros((8, 8, 3, 1), np.uint8), 8, "shape"),
    (np.zeros((0, 8), np.uint16), 16, "no pixels"),
    (np.zeros((8, 8), np.uint16), 0, "bits_stored"),
    (np.zeros((8, 8), np.uint16), 17, "bits_stored"),
    (np.zeros((8, 8), np.uint8), 9, "bits_stored"),
    (np.full((8, 8), 4096, np.uint16), 12, "do not fit"),
    (np.full((8, 8), -2049, np.int16), 12, "do not fit"),
    (np.full((8, 8), 2048, np.int16), 12, "do not fit"),
]


@pytest.mark.parametrize(("frame", "bits", "message"), BAD_FRAMES)
def test_encode_refuses_what_it_cannot_keep_lossless(
    frame: np.ndarray, bits: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_frame(frame, bits)


def _codestream() -> bytes:
    return encode_frame(_frame("u2", 12, (64, 64), "noise"), 12)


# codestream, what the message says
BAD_CODESTREAMS = [
    (b"", "too short"),
    (b"\x00" * 64, "SOC"),
    (_codestream()[:20], "truncated"),
    (_codestream()[: len(_codestream()) // 2], "truncated"),
    (_codestream()[:-2], "truncated"),
]


@pytest.mark.parametrize(("codestream", "message"), BAD_CODESTREAMS)
def test_decode_refuses_truncated_or_foreign_data(codestream: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_frame(codestream)


def test_decode_accepts_the_dicom_pad_byte() -> None:
    frame = _frame("u2", 12, (31, 31), "noise")
    np.testing.assert_array_equal(decode_frame(encode_frame(frame, 12) + b"\x00"), frame)


# out buffer, what the message says
BAD_OUTS = [
    (np.empty((64, 65), np.uint16), "shape"),
    (np.empty((64, 64), np.uint8), "cannot hold"),
    (np.empty((64, 64), np.float32), "cannot hold"),
    (np.empty((64, 128), np.uint16)[:, ::2], "C-contiguous"),
]


@pytest.mark.parametrize(("out", "message"), BAD_OUTS)
def test_decode_refuses_an_unfit_out(out: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_frame(_codestream(), out=out)


def _encode_with_rct(frame: np.ndarray) -> bytes:
    """Encode an RGB frame with the RCT, pushing lines interleaved as OpenJPH requires."""
    rows, columns, _ = frame.shape
    outfile = MemOutfile()
    outfile.open(65536, False)
    codestream = Codestream()
    siz = codestream.access_siz()
    siz.set_image_extent(Point(columns, rows))
    siz.set_num_components(3)
    for component in range(3):
        siz.set_component(component, Point(1, 1), 8, False)
    codestream.access_cod().set_reversible(True)
    codestream.access_cod().set_color_transform(True)
    codestream.set_planar(False)
    codestream.write_headers(outfile, None, 0)
    line = codestream.exchange(None, 0)
    for row in range(rows):
        for component in range(3):
            samples = (ctypes.c_int32 * columns).from_address(line.i32_address)
            np.frombuffer(samples, dtype=np.int32)[:] = frame[row, :, component]
            line = codestream.exchange(line, (component + 1) % 3)
    codestream.flush()
    data = bytes(outfile.get_data())
    codestream.close()
    outfile.close()
    return data
