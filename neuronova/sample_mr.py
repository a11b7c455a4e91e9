"""The sample brain MR study: a synthetic FLAIR-like series with known lesions, as DICOM.

Built from `models.synthetic_lesions` (the MNI template, 2 mm isotropic) with a held-out seed,
so the model never saw it. Geometry is complete and exact (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness, SpacingBetweenSlices, a
FrameOfReferenceUID), and the true lesion mask is written beside the study, in the volume's
(slice, row, column) order, for tests and for checking the AI's answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from models.synthetic_lesions import make_case
from neuronova.sample import image_dataset

SAMPLE_MR_SEED = 10_003  # held out from training; has lesions
_ROOT = "1.2.826.0.1.3680043.10.1245."
SPACING_MM = 2.0
_SCALE = 1000.0  # image units → stored values (12 bits)


def _uid(name: str) -> str:
    return generate_uid(prefix=_ROOT, entropy_srcs=["neuronova-sample-mr", name])


def mr_volume(
    seed: int = SAMPLE_MR_SEED, spacing_mm: float = SPACING_MM
) -> tuple[np.ndarray, np.ndarray]:
    """(stored values, lesion mask), both (slices, rows, columns) in DICOM order (LPS, axial)."""
    case = make_case(seed, spacing_mm=spacing_mm)
    # Template axes are RAS (x right, y anterior, z superior); DICOM rows run posterior (+y LPS)
    # and columns run to the patient's left (+x LPS): both template axes reversed, then transposed.
    image = np.transpose(case.image[::-1, ::-1, :], (2, 1, 0))
    mask = np.transpose(case.mask[::-1, ::-1, :], (2, 1, 0))
    stored = np.clip(np.round(image * _SCALE), 0, 4095).astype(np.uint16)
    return np.ascontiguousarray(stored), np.ascontiguousarray(mask.astype(np.uint8))


def write_sample_mr_study(
    folder: Path, seed: int = SAMPLE_MR_SEED, spacing_mm: float = SPACING_MM
) -> tuple[list[Path], Path]:
    """Write the series into `folder` and the true mask beside it; return (files, mask file)."""
    folder.mkdir(parents=True, exist_ok=True)
    stored, mask = mr_volume(seed, spacing_mm)
    study, series, frame = _uid(f"study-{seed}"), _uid(f"series-{seed}"), _uid(f"frame-{seed}")
    slices, rows, columns = stored.shape
    # Centre the volume on the origin; (row 0, column 0) is the patient's right-anterior corner.
    x0 = -(columns - 1) / 2 * spacing_mm
    y0 = -(rows - 1) / 2 * spacing_mm
    z0 = -(slices - 1) / 2 * spacing_mm
    paths = []
    for k in range(slices):
        position = [x0, y0, z0 + k * spacing_mm]
        ds = _mr_slice(stored[k], k, study, series, frame, position, spacing_mm)
        path = folder / f"MR{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    truth = folder.with_name(folder.name + "-truth")
    truth.mkdir(parents=True, exist_ok=True)
    mask_path = truth / "lesion_mask.npy"
    np.save(mask_path, mask)
    return paths, mask_path


def _mr_slice(
    pixels: np.ndarray,
    index: int,
    study: str,
    series: str,
    frame: str,
    position: list[float],
    spacing_mm: float,
) -> Dataset:
    ds = image_dataset(
        pixels, MRImageStorage, _uid(f"{series}-slice-{index}"), study, series, frame, index=index
    )
    ds.StudyDate = ds.SeriesDate = "20261102"
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.AccessionNumber = "NNDEMO0002"
    ds.Modality = "MR"
    ds.Manufacturer = "NeuroNova synthetic brain"
    ds.StudyDescription = "MR brain (synthetic sample)"
    ds.SeriesDescription = f"Axial FLAIR {spacing_mm:g} mm"
    ds.StudyID = "2"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.SliceThickness = spacing_mm
    ds.SpacingBetweenSlices = spacing_mm
    ds.SliceLocation = float(position[2])
    ds.ScanningSequence = "SE\\IR"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.BodyPartExamined = "BRAIN"
    ds.RepetitionTime = 9000.0
    ds.EchoTime = 120.0
    ds.InversionTime = 2500.0
    ds.EchoTrainLength = 16
    ds.MagneticFieldStrength = 3.0
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 700
    ds.WindowWidth = 1200
    return ds
