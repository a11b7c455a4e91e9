"""From a DICOM volume to the model's grid and back: RAS axis order, the bundle's spacing.

The bundle was trained on volumes whose array axes run x left→right, y posterior→anterior,
z inferior→superior (RAS, the MNI template's order) at its own isotropic spacing. A DICOM
series arrives as (slice, row, column) with an affine to LPS millimetres, in
whatever plane it was acquired (axial, sagittal, coronal) and at the scanner's spacing. So the
volume is permuted and flipped to the nearest RAS axes (no interpolation: an oblique plane is
taken as its nearest orthogonal one, as nibabel's `io_orientation` decides), then resampled
linearly to the model's spacing. Labels go back the same way in reverse, nearest neighbour, to
the exact (slice, row, column) grid of the source instances, so the SEG frames line up with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations
from scipy import ndimage

from tasks.dicom.volume import Volume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)  # nibabel's orientation of RAS itself
_SPACING_TOLERANCE = 0.02  # relative: closer than 2 % to the model's spacing is not resampled


@dataclass(frozen=True)
class ModelGrid:
    """A volume on the model's grid, with what is needed to bring labels back."""

    image: np.ndarray  # float32, RAS axes, at `spacing` mm
    spacing: tuple[float, float, float]  # of `image`, per RAS axis
    ras_shape: tuple[int, int, int]  # the source volume in RAS order, before resampling
    ornt: np.ndarray  # nibabel orientation: (column, row, slice) array → RAS array


def to_model_grid(volume: Volume, spacing_mm: tuple[float, float, float]) -> ModelGrid:
    """The volume's physical values in RAS axis order, resampled to `spacing_mm`."""
    # Volume.pixels is (slice, row, column); the affine indexes (column, row, slice).
    array = np.transpose(volume.physical(), (2, 1, 0))
    ornt = orientations.io_orientation(_LPS_TO_RAS @ volume.affine)
    ras = orientations.apply_orientation(array, ornt)
    source_spacing = _ras_spacing(volume, ornt)
    factors = tuple(
        source / target for source, target in zip(source_spacing, spacing_mm, strict=True)
    )
    ras_shape = (int(ras.shape[0]), int(ras.shape[1]), int(ras.shape[2]))
    if all(abs(f - 1.0) <= _SPACING_TOLERANCE for f in factors):
        image = np.ascontiguousarray(ras, dtype=np.float32)
        return ModelGrid(image, source_spacing, ras_shape, ornt)
    shape = tuple(max(1, round(n * f)) for n, f in zip(ras_shape, factors, strict=True))
    image = _resample(np.asarray(ras, dtype=np.float32), shape, order=1)
    return ModelGrid(image, spacing_mm, ras_shape, ornt)


def labels_to_volume_grid(labels: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """Labels from the model's grid back onto the source's (slice, row, column) grid (uint8)."""
    ras = labels
    if labels.shape != grid.ras_shape:
        ras = _resample(labels, grid.ras_shape, order=0)
    array = orientations.apply_orientation(ras, orientations.ornt_transform(_RAS, grid.ornt))
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)), dtype=np.uint8)


def _ras_spacing(volume: Volume, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each RAS axis, from the (column, row, slice) spacing."""
    slice_mm, row_mm, col_mm = volume.spacing
    by_array_axis = (col_mm, row_mm, slice_mm)
    spacing = [0.0, 0.0, 0.0]
    for array_axis, (ras_axis, _flip) in enumerate(ornt):
        spacing[int(ras_axis)] = float(by_array_axis[array_axis])
    return (spacing[0], spacing[1], spacing[2])


def _resample(array: np.ndarray, shape: tuple[int, ...], *, order: int) -> np.ndarray:
    """`array` onto `shape` with voxel centres at both ends aligned (the grid's extent kept)."""
    scale = [
        (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        for n_in, n_out in zip(array.shape, shape, strict=True)
    ]
    return ndimage.affine_transform(
        array, scale, output_shape=shape, order=order, mode="nearest", prefilter=False
    )
