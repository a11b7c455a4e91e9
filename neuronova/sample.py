"""A bundled sample study: a synthetic head CT series with correct geometry, made on demand.

Synthesised rather than shipped so the repository stays small; deterministic (fixed seed and
UIDs derived from a fixed root) so a re-run of `make demo` re-ingests the same instances.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

_ROOT = "1.2.826.0.1.3680043.10.1245."  # NeuroNova demo prefix under a public test root
SAMPLE_PATIENT_ID = "NN-DEMO-0001"


def _uid(name: str) -> str:
    """A deterministic UID for `name`."""
    return generate_uid(prefix=_ROOT, entropy_srcs=["neuronova-sample", name])


def head_phantom(rows: int, cols: int, z: float) -> np.ndarray:
    """Hounsfield units of an axial slice through a skull-and-brain ellipsoid phantom."""
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
    scale = np.sqrt(max(1e-3, 1 - z * z))
    image = np.full((rows, cols), -1000.0)
    head = (x / (0.72 * scale)) ** 2 + (y / (0.9 * scale)) ** 2
    image[head <= 1.0] = 1200.0  # skull
    image[head <= 0.85] = 35.0  # brain
    ventricles = ((x - 0.12) / 0.08) ** 2 + (y / (0.25 * scale)) ** 2
    image[ventricles <= 1.0] = 5.0
    ventricles = ((x + 0.12) / 0.08) ** 2 + (y / (0.25 * scale)) ** 2
    image[ventricles <= 1.0] = 5.0
    noise = np.random.default_rng(int((z + 1) * 1000)).normal(0, 6, size=image.shape)
    return np.round(image + noise * (image > -900)).astype(np.int16)


def write_sample_study(
    folder: Path,
    *,
    slices: int = 24,
    size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write the sample CT series into `folder`; return the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = _uid("study"), _uid("series"), _uid("frame")
    paths = []
    for index in range(slices):
        z = -0.9 + 1.8 * index / max(1, slices - 1)
        ds = ct_slice_dataset(head_phantom(size, size, z), index, study_uid, series_uid, frame_uid)
        path = folder / f"CT{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        if progress:
            progress(1)
    return paths


def image_dataset(
    pixels: np.ndarray,
    sop_class: str,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    *,
    index: int,
) -> Dataset:
    """What every synthetic axial slice shares: file meta, the demo patient, identity, frame of
    reference, orientation and the monochrome pixel description (the caller adds the rest)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Demo^Patient"
    ds.PatientID = SAMPLE_PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    return ds


def ct_slice_dataset(
    pixels: np.ndarray,
    index: int,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    sop_uid: str | None = None,
) -> Dataset:
    """One axial CT slice (signed 16-bit HU) with complete geometry and file meta."""
    sop_uid = sop_uid or _uid(f"{series_uid}-slice-{index}")
    ds = image_dataset(
        pixels, CTImageStorage, sop_uid, study_uid, series_uid, frame_uid, index=index
    )
    ds.StudyDate = ds.SeriesDate = "20261101"
    ds.StudyTime = ds.SeriesTime = "093000"
    ds.AccessionNumber = "NNDEMO0001"
    ds.Modality = "CT"
    ds.Manufacturer = "NeuroNova synthetic phantom"
    ds.StudyDescription = "Head CT (synthetic sample)"
    ds.SeriesDescription = "Axial 5 mm"
    ds.StudyID = "1"
    ds.Laterality = ""
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [-125.0, -125.0, -60.0 + 5.0 * index]
    ds.SliceThickness = 5.0
    ds.SliceLocation = -60.0 + 5.0 * index
    ds.PixelSpacing = [250.0 / pixels.shape[0], 250.0 / pixels.shape[1]]
    ds.KVP = 120
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 80
    return ds
