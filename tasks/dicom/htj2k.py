"""HTJ2K lossless codec for one image frame: NumPy in, codestream out, and back, bit for bit.

DICOM's HTJ2K transfer syntaxes (PS3.5, from Supplement 235) carry one bare ISO/IEC 15444-15
codestream per frame. This module knows nothing of DICOM datasets; `tasks.dicom.transcode` does.

Encoding goes through OpenJPH's low-level bindings (`ojph.ojph_bindings`) rather than
`ojph.imwrite_to_memory`, because that helper always writes a precision of itemsize × 8 bits
while DICOM wants the codestream precision to equal Bits Stored. Decoding uses
`read_j2c_into`, which decodes one component straight into a caller's buffer (a slice of a
volume works) with the GIL released; `ojph.imread_from_memory` rejects precisions other than
8, 16 and 32 bits.

Codestreams written here are reversible (5/3 wavelet), without a colour transform (so RGB stays
RGB), RPCL progression with a TLM marker and one tile-part per resolution, so that a viewer can
fetch a low-resolution preview first.

ojph 0.10.2 walks the components of a multi-component codestream in planar order in
`push_all_components` and `pull_all_components`, which is wrong once the reversible colour
transform (RCT) is used: `encode_frame` therefore never applies it, and `decode_frame` pulls
colour-transformed codestreams line by line, component after component.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from ojph.ojph_bindings import Codestream, MemInfile, MemOutfile, Point, read_j2c_into

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K_LOSSY = "1.2.840.10008.1.2.4.203"
HTJ2K_LOSSLESS_SYNTAXES = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL})
HTJ2K_SYNTAXES = HTJ2K_LOSSLESS_SYNTAXES | {HTJ2K_LOSSY}

_SUPPORTED_DTYPES = frozenset(np.dtype(t) for t in ("u1", "i1", "u2", "i2"))
_COLOUR_COMPONENTS = 3
_MARKER_SOT = 0xFF90
_MARKER_EOC = b"\xff\xd9"


@dataclass(frozen=True)
class FrameInfo:
    """What a codestream's main header says about the frame it holds."""

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    reversible: bool
    colour_transform: bool


def encode_frame(frame: np.ndarray, bits_stored: int) -> bytes:
    """Encode one (H, W) or (H, W, 3) frame as a reversible HTJ2K codestream.

    The codestream's precision is `bits_stored` and its signedness that of `frame.dtype`
    (8- or 16-bit integers). Every value must fit in `bits_stored` bits, otherwise the
    result would not be lossless and ValueError is raised instead.
    """
    frame = _checked_frame(frame, bits_stored)
    rows, columns = frame.shape[:2]
    components = frame.shape[2] if frame.ndim == 3 else 1
    signed = frame.dtype.kind == "i"

    outfile = MemOutfile()
    # Room for the raw frame up front: no reallocation even for incompressible noise.
    outfile.open(max(frame.nbytes + 4096, 65536), False)
    codestream = Codestream()
    try:
        siz = codestream.access_siz()
        siz.set_image_extent(Point(columns, rows))
        siz.set_num_components(components)
        for component in range(components):
            siz.set_component(component, Point(1, 1), bits_stored, signed)
        cod = codestream.access_cod()
        cod.set_reversible(True)
        cod.set_color_transform(False)
        cod.set_progression_order("RPCL")
        # Planar pushing is what push_all_components does; it is allowed without the RCT.
        codestream.set_planar(components > 1)
        codestream.set_tilepart_divisions(True, False)
        codestream.request_tlm_marker(True)
        codestream.write_headers(outfile, None, 0)
        codestream.push_all_components(frame, components, "HWC" if components > 1 else "HW")
        codestream.flush()
        return bytes(outfile.get_data())
    finally:
        codestream.close()
        outfile.close()


def decode_frame(
    codestream: bytes | bytearray | memoryview, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode one HTJ2K codestream into a NumPy array.

    Without `out`, the array is (rows, columns) or (rows, columns, components), int8/uint8 up
    to 8 bits of precision and int16/uint16 up to 16, signed as the codestream says. With
    `out` (C-contiguous, that shape, an 8- or 16-bit integer dtype wide enough) the frame is
    decoded in place, e.g. into `volume[i]`. Raises ValueError for a truncated or malformed
    codestream or an unfit `out`.
    """
    data = _as_uint8(codestream)
    _check_complete(data)
    info = _read_info(data)
    out = _checked_out(info, out)
    try:
        if info.components == 1:
            read_j2c_into(data, out, 0)
        else:
            _decode_components(data, info, out)
    except RuntimeError as err:
        raise ValueError(f"OpenJPH could not decode the codestream: {err}") from err
    return out


def read_info(codestream: bytes | bytearray | memoryview) -> FrameInfo:
    """Read the main header of a codestream without decoding it."""
    return _read_info(_as_uint8(codestream))


def _as_uint8(codestream: bytes | bytearray | memoryview) -> np.ndarray:
    """View the codestream as the 1-D uint8 array the bindings want, without copying."""
    data = np.frombuffer(codestream, dtype=np.uint8)
    if data.size < 4:
        raise ValueError(f"codestream of {data.size} bytes is too short to hold a header")
    return data


def _checked_frame(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    """Return `frame` in a layout the encoder reads directly, or raise ValueError."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a NumPy array, not {type(frame).__name__}")
    if frame.dtype.newbyteorder("=") not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"frame dtype {frame.dtype} is not supported: use int8, uint8, int16 or uint16"
        )
    colour = frame.ndim == 3 and frame.shape[2] == _COLOUR_COMPONENTS
    if frame.ndim != 2 and not colour:
        raise ValueError(
            f"frame shape {frame.shape} is neither (rows, columns) nor (rows, columns, 3)"
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame shape {frame.shape} has no pixels")
    width = frame.dtype.itemsize * 8
    if not 1 <= bits_stored <= width:
        raise ValueError(
            f"bits_stored {bits_stored} must be between 1 and {width} for {frame.dtype}"
        )
    signed = frame.dtype.kind == "i"
    low, high = (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
        if signed
        else (0, (1 << bits_stored) - 1)
    )
    if bits_stored < width:
        found_low, found_high = int(frame.min()), int(frame.max())
        if found_low < low or found_high > high:
            raise ValueError(
                f"pixel values {found_low}..{found_high} do not fit bits_stored {bits_stored} "
                f"({'signed' if signed else 'unsigned'} range {low}..{high})"
            )
    # The bindings read raw memory in native order and assume non-negative strides.
    frame = frame.astype(frame.dtype.newbyteorder("="), copy=False)
    if any(stride < 0 for stride in frame.strides):
        frame = np.ascontiguousarray(frame)
    return frame


def _read_info(data: np.ndarray) -> FrameInfo:
    """Parse the SIZ and COD markers through OpenJPH."""
    infile = MemInfile()
    infile.open(data)
    codestream = Codestream()
    try:
        codestream.read_headers(infile)
        siz = codestream.access_siz()
        cod = codestream.access_cod()
        extent, offset = siz.get_image_extent(), siz.get_image_offset()
        components = siz.get_num_components()
        for component in range(components):
            step = siz.get_downsampling(component)
            if step.x != 1 or step.y != 1:
                raise ValueError("sub-sampled components are not supported")
        return FrameInfo(
            rows=extent.y - offset.y,
            columns=extent.x - offset.x,
            components=components,
            precision=siz.get_bit_depth(0),
            signed=siz.is_signed(0),
            reversible=cod.is_reversible(),
            colour_transform=cod.is_using_color_transform(),
        )
    except RuntimeError as err:
        raise ValueError(f"not a readable JPEG 2000 codestream header: {err}") from err
    finally:
        codestream.close()


def _check_complete(data: np.ndarray) -> None:
    """Raise ValueError unless the tile-parts chain from the main header to the EOC marker.

    OpenJPH decodes a truncated codestream without an error (it only prints a note), so a
    frame cut short would otherwise come back as plausible but wrong pixels.
    """
    raw = memoryview(data)
    size = len(raw)
    if raw[:2] != b"\xff\x4f":
        raise ValueError("codestream does not start with the SOC marker")
    position = 2
    # Walk the main header's marker segments up to the first SOT.
    while _marker_at(raw, position) != _MARKER_SOT:
        position += 2 + int.from_bytes(raw[position + 2 : position + 4], "big")
    while position + 10 <= size and _marker_at(raw, position) == _MARKER_SOT:
        tile_part = int.from_bytes(raw[position + 6 : position + 10], "big")
        if tile_part == 0:  # Psot 0: this tile-part runs to the EOC marker at the end.
            position = size - 3 if raw[-1] == 0 and raw[-3:-1] == _MARKER_EOC else size - 2
            break
        position += tile_part
    # Bytes after the EOC marker are ignored: DICOM pads odd-length fragments with one byte.
    if raw[position : position + 2] != _MARKER_EOC:
        raise ValueError(
            f"codestream is truncated or malformed: {size} bytes, "
            f"no EOC marker where its tile-parts end (byte {position})"
        )


def _marker_at(raw: memoryview, position: int) -> int:
    """Return the marker at `position`, or raise ValueError if there is none."""
    if position + 4 > len(raw) or raw[position] != 0xFF:
        raise ValueError(f"codestream is truncated or malformed: no marker at byte {position}")
    return int.from_bytes(raw[position : position + 2], "big")


def _checked_out(info: FrameInfo, out: np.ndarray | None) -> np.ndarray:
    """Return the buffer to decode into: `out` if it fits the frame, else a new array."""
    if info.precision > 16:
        raise ValueError(f"codestream precision {info.precision} is above the 16 bits supported")
    shape = (
        (info.rows, info.columns)
        if info.components == 1
        else (info.rows, info.columns, info.components)
    )
    if out is None:
        kind = "i" if info.signed else "u"
        return np.empty(shape, dtype=np.dtype(f"{kind}{1 if info.precision <= 8 else 2}"))
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, the codestream holds {shape}")
    if out.dtype not in _SUPPORTED_DTYPES or out.dtype.itemsize * 8 < info.precision:
        raise ValueError(f"out dtype {out.dtype} cannot hold {info.precision}-bit samples")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def _decode_components(data: np.ndarray, info: FrameInfo, out: np.ndarray) -> None:
    """Decode a multi-component codestream into `out` (rows, columns, components)."""
    infile = MemInfile()
    infile.open(data)
    codestream = Codestream()
    try:
        codestream.read_headers(infile)
        codestream.create()
        if not info.colour_transform:
            codestream.pull_all_components(out, info.components, "HWC", None, None)
            return
        # With the RCT, lines must be pulled interleaved (see the module docstring).
        line_type = ctypes.c_int32 * info.columns
        for row in range(info.rows):
            for component in range(info.components):
                line = codestream.pull(component)
                if line.size != info.columns:
                    raise ValueError(
                        f"decoded line of {line.size} samples, expected {info.columns}"
                    )
                samples = line_type.from_address(line.i32_address)
                out[row, :, component] = np.frombuffer(samples, dtype=np.int32)
    finally:
        codestream.close()
