"""A series as one NumPy volume: parallel fetch, HTJ2K decoded by OpenJPH straight into place.

The files come from Orthanc in parallel (`/instances/{id}/file`, byte-identical to what ingest
stored). Each slice's codestream is decoded into its row of one preallocated array, in a thread
pool (the decoder releases the GIL), instead of pydicom's default path, which decodes to a new
array and copies. Slices are ordered by their position along the normal of the image plane;
the affine maps (column, row, slice) indices to patient coordinates (LPS, mm).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames

from common.errors import NeuroNovaError
from common.logs import carry_context
from tasks.dicom.header import scan_header
from tasks.dicom.htj2k import HTJ2K_SYNTAXES, decode_frame

log = logging.getLogger(__name__)

_SPACING_TOLERANCE = 0.01  # relative: slice gaps must agree to 1 %


class SeriesArchive(Protocol):
    """What reading a series needs of the archive (`tasks.archive.orthanc.OrthancClient`)."""

    def series_instances(self, series_id: str) -> list[dict[str, Any]]: ...
    def instance_tags(self, orthanc_id: str) -> dict[str, Any]: ...
    def instance_transfer_syntax(self, orthanc_id: str) -> str: ...
    def get_instance_file(self, orthanc_id: str) -> bytes: ...
    def instance_frame_raw(self, orthanc_id: str, frame: int = 0) -> bytes: ...


class VolumeError(NeuroNovaError):
    """A series that is not one regular 3D volume (the message says why)."""


@dataclass(frozen=True)
class Volume:
    pixels: np.ndarray  # (slices, rows, columns), stored values (see slope/intercept)
    affine: np.ndarray  # 4x4: (column, row, slice, 1) → LPS mm
    spacing: tuple[float, float, float]  # (slice, row, column) mm
    sop_instance_uids: tuple[str, ...]  # in slice order
    slope: float
    intercept: float
    headers: tuple[Dataset, ...]  # without pixel data, in slice order (empty unless asked for)

    def physical(self) -> np.ndarray:
        """Values in the modality's units (float32)."""
        return self.pixels.astype(np.float32) * self.slope + self.intercept


def volume_from_files(
    blobs: Sequence[bytes], workers: int = 4, *, with_headers: bool = False
) -> Volume:
    """Assemble a volume from the DICOM files of one series (any order).

    HTJ2K files are read the fast way: a few attributes scanned without pydicom, the codestream
    cut out and decoded into place (`with_headers` parses each file's attributes as well).
    Anything else goes through pydicom, headers included.
    """
    if not blobs:
        raise VolumeError("no instances in the series")
    scanned = [scan_header(blob) for blob in blobs]
    if all(s is not None and s.get("TransferSyntaxUID") in HTJ2K_SYNTAXES for s in scanned):
        slices = [
            _SliceRef(key=index, main=tags)
            for index, tags in enumerate(s for s in scanned if s is not None)
        ]
        read = _htj2k_reader(lambda index: blobs[index], None, with_headers)
        return _assemble(slices, slices[0].main, read, workers)
    return _volume_from_datasets(blobs, workers)


def _volume_from_datasets(blobs: Sequence[bytes], workers: int) -> Volume:
    """The general path: every file parsed by pydicom, pixels decoded per transfer syntax."""
    datasets = [dcmread(io.BytesIO(blob)) for blob in blobs]
    slices = [_SliceRef(key=index, main=_main_tags(ds)) for index, ds in enumerate(datasets)]

    def read(index: int, out: np.ndarray) -> Dataset:
        ds = datasets[index]
        _decode_into(ds, out)
        del ds.PixelData  # the headers stay; the pixels live in the volume
        return ds

    return _assemble(slices, slices[0].main, read, workers)


_ASSEMBLY_TAGS = (
    "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns",
    "NumberOfFrames", "PixelSpacing", "PixelRepresentation", "BitsAllocated", "RescaleSlope",
    "RescaleIntercept",
)  # fmt: skip


def _main_tags(ds: Dataset) -> dict[str, Any]:
    """The attributes a volume is assembled from, as `_assemble` reads them."""
    return {name: ds.get(name) for name in _ASSEMBLY_TAGS if ds.get(name) is not None}


def _pixel_dtype(pixel_representation: int, bits_allocated: int) -> np.dtype:
    """The stored values' type: signed or not, 8 or 16 bits."""
    width = 1 if bits_allocated == 8 else 2
    return np.dtype(f"{'i' if pixel_representation == 1 else 'u'}{width}")


def _affine(
    orientation: np.ndarray,
    normal: np.ndarray,
    spacing: tuple[float, float, float],
    origin: np.ndarray,
) -> np.ndarray:
    """(column, row, slice, 1) → LPS mm, from the plane's directions and the first position."""
    slice_mm, row_mm, col_mm = spacing
    affine = np.eye(4)
    affine[:3, 0] = orientation[0] * col_mm  # along a row: the column index
    affine[:3, 1] = orientation[1] * row_mm  # down a column: the row index
    affine[:3, 2] = normal * slice_mm
    affine[:3, 3] = origin
    return affine


def _slice_spacing(positions: list[np.ndarray], normal: np.ndarray) -> float:
    if len(positions) == 1:
        return 1.0
    gaps = np.diff([float(p @ normal) for p in positions])
    spacing = float(np.median(gaps))
    if spacing <= 0 or np.any(np.abs(gaps - spacing) > _SPACING_TOLERANCE * spacing):
        raise VolumeError(
            f"irregular or repeated slice positions (gaps {gaps.min():.3f}-{gaps.max():.3f} mm)"
        )
    return spacing


def _decode_into(ds: Dataset, out: np.ndarray) -> None:
    """One slice into its place: OpenJPH for HTJ2K, pydicom for anything else (kept lossy, …)."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax in HTJ2K_SYNTAXES:
        (codestream,) = generate_frames(ds.PixelData, number_of_frames=1)
        decode_frame(codestream, out=out)
    else:
        out[...] = ds.pixel_array


def read_series_from_orthanc(
    client: SeriesArchive, series_id: str, *, workers: int = 8, with_headers: bool = False
) -> Volume:
    """A series straight from Orthanc, without parsing one DICOM file per slice.

    One request lists the instances with their positions and orientation (main DICOM tags),
    one reads the first instance's tags (size, spacing, pixel representation); then each
    slice's file is fetched, its HTJ2K codestream cut out (`codestream_from_file`, or Orthanc's
    raw frame when the file is not in our shape) and decoded into place, in parallel. A
    series whose slices are not HTJ2K is read from whole files with pydicom. `with_headers`
    also parses each file's attributes up to the pixel data (what a DICOM SEG must reference).
    """
    instances = client.series_instances(series_id)
    if not instances:
        raise VolumeError(f"series {series_id} has no instances in Orthanc")
    tags = client.instance_tags(instances[0]["ID"])
    syntax = client.instance_transfer_syntax(instances[0]["ID"])
    if syntax not in HTJ2K_SYNTAXES:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            fetch = carry_context(client.get_instance_file)
            blobs = list(pool.map(fetch, [i["ID"] for i in instances]))
        return volume_from_files(blobs, workers=min(workers, 4), with_headers=with_headers)
    slices = [_SliceRef(key=i["ID"], main=i.get("MainDicomTags", {})) for i in instances]
    read = _htj2k_reader(client.get_instance_file, client.instance_frame_raw, with_headers)
    return _assemble(slices, tags, read, workers)


@dataclass(frozen=True)
class _SliceRef:
    key: Any  # how `fetch` finds the slice's file (an Orthanc ID, an index)
    main: dict[str, Any]  # its position, orientation, SOP UID (strings, as Orthanc gives them)


# Decodes one slice (by its key) into the array given; returns its header when it has one.
SliceReader = Callable[[Any, np.ndarray], Dataset | None]


def _htj2k_reader(
    fetch: Callable[[Any], bytes], raw_frame: Callable[[Any], bytes] | None, with_headers: bool
) -> SliceReader:
    """Fetch a slice's file, cut its HTJ2K codestream out and decode it into place.

    `raw_frame` gives the codestream when the file is not in our shape; `with_headers` also
    parses the file's attributes up to the pixel data.
    """

    def read(key: Any, out: np.ndarray) -> Dataset | None:
        # The stored file is Orthanc's cheapest answer; cutting its codestream out here costs
        # microseconds, where Orthanc's own /frames/0/raw parses the file for every slice.
        blob = fetch(key)
        header = dcmread(io.BytesIO(blob), stop_before_pixels=True) if with_headers else None
        codestream = codestream_from_file(blob)
        if codestream is None:
            if raw_frame is None:
                raise VolumeError("an HTJ2K file whose codestream cannot be found")
            codestream = raw_frame(key)
        decode_frame(codestream, out=out)
        return header

    return read


def _assemble(
    slices: list[_SliceRef], shared: dict[str, Any], read: SliceReader, workers: int
) -> Volume:
    """Order slices by position, check they make one regular volume, then `read` each into
    place in parallel. `shared` holds what all slices have in common (size, spacing, pixel
    representation)."""
    rows, columns = int(shared["Rows"]), int(shared["Columns"])
    orientation = _floats(shared["ImageOrientationPatient"]).reshape(2, 3)
    normal = np.cross(orientation[0], orientation[1])
    located = []
    for ref in slices:
        if "ImagePositionPatient" not in ref.main:
            raise VolumeError("an instance without ImagePositionPatient")
        if int(ref.main.get("NumberOfFrames") or 1) != 1:
            raise VolumeError("multi-frame instances are not read as slices")
        other = _floats(ref.main.get("ImageOrientationPatient", shared["ImageOrientationPatient"]))
        if not np.allclose(other.reshape(2, 3), orientation, atol=1e-4):
            raise VolumeError("slices with different orientations")
        if (int(ref.main.get("Rows", rows)), int(ref.main.get("Columns", columns))) != (
            rows,
            columns,
        ):
            raise VolumeError("slices of different sizes")
        position = _floats(ref.main["ImagePositionPatient"])
        located.append((float(position @ normal), position, ref))
    located.sort(key=lambda item: item[0])
    positions = [item[1] for item in located]
    spacing_z = _slice_spacing(positions, normal)
    dtype = _pixel_dtype(
        int(shared.get("PixelRepresentation", 0)), int(shared.get("BitsAllocated", 16))
    )
    pixels = np.empty((len(located), rows, columns), dtype=dtype)
    headers: list[Dataset | None] = [None] * len(located)

    def fill(index: int) -> None:
        headers[index] = read(located[index][2].key, pixels[index])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fill, range(len(located))))
    row_mm, col_mm = (float(v) for v in _floats(shared["PixelSpacing"]))
    affine = _affine(orientation, normal, (spacing_z, row_mm, col_mm), positions[0])
    return Volume(
        pixels=pixels,
        affine=affine,
        spacing=(spacing_z, row_mm, col_mm),
        sop_instance_uids=tuple(str(item[2].main.get("SOPInstanceUID", "")) for item in located),
        slope=float(shared.get("RescaleSlope") or 1),
        intercept=float(shared.get("RescaleIntercept") or 0),
        headers=tuple(h for h in headers if h is not None),
    )


# Pixel Data (7FE0,0010), explicit VR little endian, OB, undefined length: encapsulated frames.
_ENCAPSULATED_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"
_SOC = b"\xff\x4f"  # a JPEG 2000 codestream starts here


def codestream_from_file(blob: bytes) -> bytes | None:
    """The single frame's HTJ2K codestream of a Part 10 file, without parsing the dataset.

    Only for the shape our ingest writes (explicit VR little endian meta and dataset, Pixel Data
    last, encapsulated): the fragments after the offset table are joined. Anything else, or
    anything that does not look like a codestream, is None (the caller asks Orthanc instead).
    """
    if b"1.2.840.10008.1.2.4.20" not in blob[:512]:
        return None
    start = blob.rfind(_ENCAPSULATED_PIXEL_DATA)
    if start < 0:
        return None
    position = start + len(_ENCAPSULATED_PIXEL_DATA)
    fragments: list[bytes] = []
    first = True
    while position + 8 <= len(blob):
        tag = blob[position : position + 4]
        length = int.from_bytes(blob[position + 4 : position + 8], "little")
        position += 8
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or position + length > len(blob):
            return None
        if not first:  # the first item is the basic offset table
            fragments.append(blob[position : position + length])
        first = False
        position += length
    else:
        return None
    codestream = b"".join(fragments)
    return codestream if codestream.startswith(_SOC) else None


def _floats(value: str | list[Any]) -> np.ndarray:
    """A multi-valued DS as Orthanc gives it ("a\\b\\c") or as a list."""
    parts = value.split("\\") if isinstance(value, str) else value
    return np.array([float(v) for v in parts], dtype=np.float64)
