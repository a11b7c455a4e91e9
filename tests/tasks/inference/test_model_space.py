"""The model's grid (RAS, the bundle's spacing) and labels back in place."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.dicom.volume import Volume
from tasks.inference.model_space import labels_to_volume_grid, to_model_grid


def _volume(
    pixels: np.ndarray, orientation: list[float], spacing: tuple[float, float, float]
) -> Volume:
    """A volume with the given ImageOrientationPatient and (slice, row, column) spacing."""
    rows_dir = np.array(orientation[:3])
    cols_dir = np.array(orientation[3:])
    normal = np.cross(rows_dir, cols_dir)
    affine = np.eye(4)
    affine[:3, 0] = rows_dir * spacing[2]
    affine[:3, 1] = cols_dir * spacing[1]
    affine[:3, 2] = normal * spacing[0]
    return Volume(pixels, affine, spacing, (), 1.0, 0.0, ())


AXIAL = [1.0, 0, 0, 0, 1.0, 0]
SAGITTAL = [0, 1.0, 0, 0, 0, -1.0]
CORONAL = [1.0, 0, 0, 0, 0, -1.0]


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL, CORONAL], ids=["axial", "sag", "cor"])
def test_the_model_grid_is_ras_and_labels_come_back_in_place(orientation: list[float]) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 1000, size=(12, 14, 16)).astype(np.uint16)
    volume = _volume(pixels, orientation, (2.0, 2.0, 2.0))
    grid = to_model_grid(volume, (2.0, 2.0, 2.0))
    # A voxel's RAS position must grow along each axis of the model's image.
    index = np.array([3, 5, 7])  # (column, row, slice) of one voxel
    lps = (volume.affine @ np.append(index, 1.0))[:3]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    value = float(pixels[index[2], index[1], index[0]])
    where = np.argwhere(grid.image == value)
    corners = [
        (volume.affine @ np.array([c, r, s, 1.0]))[:3] * np.array([-1.0, -1.0, 1.0])
        for c in (0, 15)
        for r in (0, 13)
        for s in (0, 11)
    ]
    origin = np.min(corners, axis=0)
    assert any(np.allclose(w * 2.0 + origin, ras) for w in where)
    labels = (grid.image > 500).astype(np.uint8)
    back = labels_to_volume_grid(labels, grid)
    assert back.shape == pixels.shape
    assert np.array_equal(back, (pixels > 500).astype(np.uint8))


def test_a_finer_series_is_resampled_to_the_model_spacing_and_back() -> None:
    pixels = np.zeros((40, 64, 64), dtype=np.uint16)
    pixels[10:30, 20:44, 16:48] = 800  # a block of 20x24x32 voxels at 1 mm
    volume = _volume(pixels, AXIAL, (1.0, 1.0, 1.0))
    grid = to_model_grid(volume, (2.0, 2.0, 2.0))
    assert grid.image.shape == (32, 32, 20) and grid.spacing == (2.0, 2.0, 2.0)
    back = labels_to_volume_grid((grid.image > 400).astype(np.uint8), grid)
    assert back.shape == pixels.shape
    overlap = np.logical_and(back, pixels > 0).sum() / (pixels > 0).sum()
    assert overlap > 0.9 and back.sum() < 1.2 * (pixels > 0).sum()
