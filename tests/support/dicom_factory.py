"""Synthetic DICOM image instances for tests: CT, MR and Secondary Capture, built from scratch.

`make_dataset` returns a complete dataset (file meta included) around pixels you pass or that
`make_pixels` draws; `to_part10` writes it as a Part 10 file. Every call mints new UIDs with
`generate_uid()` unless you pass identifiers, so instances never collide across tests.

The SOP class follows the pixels: single-frame 16-bit greyscale is CT Image (or MR Image with
`modality="MR"`); 8-bit or colour single frames are Secondary Capture; several frames are the
matching Multi-frame Secondary Capture. Each carries the modules its IOD requires, so
`dciodvfy` finds no errors in the common cases (signed or 12-bit multi-frame data is the
exception: Multi-frame Grayscale Word SC allows neither).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import pack_bits
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from neuronova.sample import ct_slice_dataset, head_phantom

Pattern = Literal["smooth", "noise", "constant"]

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
MF_GRAYSCALE_BYTE_SC = UID("1.2.840.10008.5.1.4.1.1.7.2")
MF_GRAYSCALE_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
MF_TRUE_COLOUR_SC = UID("1.2.840.10008.5.1.4.1.1.7.4")
NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)


def make_pixels(
    rows: int,
    columns: int,
    frames: int = 1,
    *,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    samples: int = 1,
    pattern: Pattern = "smooth",
    seed: int = 0,
) -> np.ndarray:
    """Draw pixels shaped like pydicom's `pixel_array`, spanning the whole Bits Stored range.

    "smooth" is a gradient with a few bright discs (compresses like anatomy), "noise" is
    uniform random values (the worst case for a codec), "constant" is the range's minimum.
    Shape: (rows, columns[, samples]) for one frame, (frames, rows, columns[, samples]) else.
    """
    bits_stored = bits_stored or bits_allocated
    low = -(1 << (bits_stored - 1)) if signed else 0
    high = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    shape = (frames, rows, columns) + ((samples,) if samples > 1 else ())
    rng = np.random.default_rng(seed)
    if pattern == "noise":
        values = rng.integers(low, high, size=shape, endpoint=True)
    elif pattern == "constant":
        values = np.full(shape, low)
    else:
        values = _smooth(shape, low, high, rng)
    dtype = np.dtype(f"{'i' if signed else 'u'}{max(bits_allocated, 8) // 8}")
    pixels = values.astype(dtype)
    return pixels[0] if frames == 1 else pixels


def make_dataset(
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    *,
    pixels: np.ndarray | None = None,
    pattern: Pattern = "smooth",
    seed: int = 0,
    modality: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "NN-TEST-0001",
    patient_name: str = "Test^Synthetic",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """Return a complete image dataset with file meta, native pixel data and fresh UIDs.

    `photometric` sets the samples per pixel: 3 for RGB and YBR_FULL, 1 otherwise.
    `pixels` (shaped as `make_pixels` returns) overrides the drawn ones. `transfer_syntax` is
    one of the four native syntaxes: the pixel bytes are laid out for it, and `to_part10`
    writes the whole dataset in it. Compress the result with `ds.compress(...)` if needed.
    """
    if transfer_syntax not in NATIVE_SYNTAXES:
        raise ValueError(f"{transfer_syntax} is not a native transfer syntax; use ds.compress()")
    bits_stored = bits_stored or bits_allocated
    samples = 3 if photometric in ("RGB", "YBR_FULL") else 1
    if pixels is None:
        pixels = make_pixels(
            rows,
            columns,
            frames,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            signed=signed,
            samples=samples,
            pattern=pattern,
            seed=seed,
        )
    expected = (
        ((frames,) if frames > 1 else ()) + (rows, columns) + ((samples,) if samples > 1 else ())
    )
    if pixels.shape != expected:
        raise ValueError(f"pixels have shape {pixels.shape}, the dataset needs {expected}")
    sop_class = _sop_class(frames, bits_allocated, samples, modality)
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid or generate_uid(), transfer_syntax)
    _patient_study_series(ds, sop_class, modality, patient_id, patient_name, study_uid, series_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"]
        if sop_class in (CT_IMAGE, MR_IMAGE)
        else ["DERIVED", "SECONDARY"]
    )
    _image_pixel(
        ds, rows, columns, frames, samples, bits_allocated, bits_stored, signed, photometric
    )
    _iod_specifics(ds, sop_class, frames, signed)
    ds.PixelData = _native_bytes(pixels, bits_allocated, transfer_syntax)
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    return ds


def make_htj2k_dataset(
    codestreams: list[bytes], template: Dataset, transfer_syntax: str
) -> Dataset:
    """Return a copy of `template` whose pixel data is `codestreams`, under `transfer_syntax`.

    The codestreams are encapsulated as given (one frame each), so a test can store broken or
    foreign ones; `template` is left unchanged.
    """
    ds = Dataset(dict(template.items()))
    ds.file_meta = FileMetaDataset(dict(template.file_meta.items()))
    ds.file_meta[0x00020010] = DataElement(0x00020010, "UI", UID(transfer_syntax))
    ds[0x7FE00010] = DataElement(
        0x7FE00010, "OB", encapsulate(codestreams), is_undefined_length=True
    )
    return ds


def to_part10(ds: Dataset) -> bytes:
    """Write `ds` as a Part 10 file in the transfer syntax of its file meta."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _smooth(shape: tuple[int, ...], low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """A diagonal ramp over the range plus a few saturated discs, per frame and sample."""
    rows, columns = shape[1], shape[2]
    y, x = np.mgrid[0:rows, 0:columns]
    ramp = (y / max(rows - 1, 1) + x / max(columns - 1, 1)) / 2
    image = np.broadcast_to(ramp[None, ..., None] if len(shape) == 4 else ramp[None], shape).copy()
    for _ in range(3):
        cy, cx, radius = rng.uniform(0, rows), rng.uniform(0, columns), rng.uniform(2, 10)
        disc = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[:, disc] = 1.0
    frame_shift = np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)) * 0.01
    image = np.clip(image - frame_shift, 0.0, 1.0)
    return np.rint(low + image * (high - low)).astype(np.int64)


def _sop_class(frames: int, bits_allocated: int, samples: int, modality: str | None) -> UID:
    """Pick the SOP class that fits the pixels."""
    if frames > 1:
        if samples == 3:
            return MF_TRUE_COLOUR_SC
        return MF_GRAYSCALE_BYTE_SC if bits_allocated == 8 else MF_GRAYSCALE_WORD_SC
    if samples == 1 and bits_allocated == 16 and modality in (None, "CT"):
        return CT_IMAGE
    if samples == 1 and bits_allocated == 16 and modality == "MR":
        return MR_IMAGE
    return SECONDARY_CAPTURE


def _file_meta(sop_class: UID, sop_uid: str, transfer_syntax: str) -> FileMetaDataset:
    """File meta for a new instance; pydicom fills the implementation fields on writing."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    return meta


def _patient_study_series(
    ds: Dataset,
    sop_class: UID,
    modality: str | None,
    patient_id: str,
    patient_name: str,
    study_uid: str | None,
    series_uid: str | None,
) -> None:
    """Patient, General Study, General Series and General Equipment modules."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.Modality = modality or {CT_IMAGE: "CT", MR_IMAGE: "MR"}.get(sop_class, "OT")
    ds.Manufacturer = "NeuroNova tests"
    ds.PatientOrientation = ""
    # Type 2C: validators cannot tell whether the body part is paired, so say "unknown".
    ds.Laterality = ""
    if sop_class in (CT_IMAGE, MR_IMAGE):
        ds.PatientPosition = "HFS"


def _image_pixel(
    ds: Dataset,
    rows: int,
    columns: int,
    frames: int,
    samples: int,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    photometric: str,
) -> None:
    """Image Pixel module (and Number of Frames)."""
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames


def _iod_specifics(ds: Dataset, sop_class: UID, frames: int, signed: bool) -> None:
    """The modules that differ between CT, MR and the Secondary Capture flavours."""
    if sop_class in (CT_IMAGE, MR_IMAGE):
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.AcquisitionNumber = 1
    if sop_class == CT_IMAGE:
        ds.RescaleIntercept = 0 if signed else -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
    elif sop_class == MR_IMAGE:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500.0, 15.0, 1
        ds.MagneticFieldStrength = 3.0
        ds.ImagedNucleus = "1H"
    else:
        ds.ConversionType = "WSD"
    if frames > 1:
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 40.0
        ds.BurnedInAnnotation = "NO"
        if sop_class in (MF_GRAYSCALE_BYTE_SC, MF_GRAYSCALE_WORD_SC):
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
            ds.PresentationLUTShape = "IDENTITY"


def _native_bytes(pixels: np.ndarray, bits_allocated: int, transfer_syntax: str) -> bytes:
    """Lay the pixels out as native Pixel Data for the transfer syntax, padded to even length."""
    if bits_allocated == 1:
        data = pack_bits(pixels.astype(np.uint8), pad=False)
    else:
        big_endian = transfer_syntax == ExplicitVRBigEndian
        data = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
    return data + b"\x00" if len(data) % 2 else data


# Whole small CT slices (the sample's head phantom) for the ingest and archive tests.


def make_ct(
    index: int = 0,
    *,
    size: int = 64,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
) -> Dataset:
    """A small signed-16 CT slice with fresh UIDs unless given."""
    return ct_slice_dataset(
        head_phantom(size, size, -0.5 + index / 10),
        index,
        study or generate_uid(),
        series or generate_uid(),
        generate_uid(),
        sop_uid=sop or generate_uid(),
    )


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
