"""The units of inference: which series, the model's grid and back, the out-of-memory fallbacks,
the measurements, the overlay and the SEG's stable UIDs."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from common.settings import Settings
from tasks.dicom.volume import Volume
from tasks.inference.model_space import labels_to_volume_grid, to_model_grid
from tasks.inference.segmentation import LoadedBundle, load_bundle
from tasks.inference.units import (
    NoSuitableSeries,
    choose_series,
    fallback_plans,
    measure_lesions,
    overlay_png,
    seg_uids,
    segment_with_fallback,
)


def _series(sid: str, modality: str, description: str, count: int, **tags: str) -> dict[str, Any]:
    main = {"Modality": modality, "SeriesDescription": description, "SeriesInstanceUID": sid}
    return {"ID": f"orthanc-{sid}", "MainDicomTags": main | tags, "Instances": ["x"] * count}


BRAIN_STUDY = {"StudyDescription": "MR BRAIN W/O"}


@pytest.mark.parametrize(
    ("study", "series", "require_brain", "chosen"),
    [
        (BRAIN_STUDY, [_series("1", "MR", "T1 sag", 100), _series("2", "MR", "AX FLAIR", 40)],
         False, "2"),
        (BRAIN_STUDY, [_series("1", "MR", "T1", 100), _series("2", "MR", "T2 tse", 40)],
         False, "2"),
        (BRAIN_STUDY, [_series("1", "MR", "DWI", 30), _series("2", "MR", "T1 mprage", 176)],
         False, "2"),
        ({}, [_series("1", "MR", "FLAIR", 40), _series("2", "MR", "T1", 60, BodyPartExamined="HEAD")],
         True, "2"),
        ({}, [_series("1", "MR", "ax flair", 40)], False, "1"),  # manual run: read anyway
        (BRAIN_STUDY, [_series("1", "MR", "FLAIR", 4), _series("2", "MR", "T1", 20)], False, "2"),
    ],
)  # fmt: skip
def test_the_series_to_read(
    study: dict[str, str], series: list[dict[str, Any]], require_brain: bool, chosen: str
) -> None:
    choice = choose_series(study, series, min_slices=16, require_brain=require_brain)
    assert choice.series_uid == chosen and choice.orthanc_id == f"orthanc-{chosen}"


@pytest.mark.parametrize(
    ("series", "require_brain", "message"),
    [
        ([_series("1", "CT", "Head 5 mm", 40)], False, r"no MR series.*CT 'Head 5 mm' \(40"),
        ([_series("1", "MR", "FLAIR", 8)], False, "at least 16 slices"),
        ([], False, "no series"),
        ([_series("1", "MR", "knee PD", 40)], True, "says it is of the head"),
    ],
)
def test_nothing_to_read_is_said_plainly(
    series: list[dict[str, Any]], require_brain: bool, message: str
) -> None:
    with pytest.raises(NoSuitableSeries, match=message):
        choose_series({}, series, min_slices=16, require_brain=require_brain)


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
        for c in (0, 15) for r in (0, 13) for s in (0, 11)
    ]  # fmt: skip
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


class _RunsOutOfMemory(torch.nn.Module):
    """A network that fails like a full GPU when given more than `max_batch` windows at once."""

    def __init__(self, inner: torch.nn.Module, max_batch: int) -> None:
        super().__init__()
        self.inner, self.max_batch, self.calls = inner, max_batch, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        result: torch.Tensor = self.inner(x)
        return result


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(Settings().model_bundle_dir, device="cpu")


def test_out_of_memory_falls_back_to_smaller_windows(bundle: LoadedBundle) -> None:
    image = np.random.default_rng(0).random((80, 80, 80), dtype=np.float32)  # 8 windows
    flaky = replace(bundle, network=_RunsOutOfMemory(bundle.network, max_batch=1))
    labels, device, attempts = segment_with_fallback(flaky, image)
    assert attempts == ("as configured on cpu: out of memory", "smaller windows on cpu: ok")
    assert device == "cpu" and labels.shape == image.shape


def test_out_of_memory_everywhere_fails_with_every_attempt_named(bundle: LoadedBundle) -> None:
    hopeless = replace(bundle, network=_RunsOutOfMemory(bundle.network, max_batch=0))
    with pytest.raises(torch.OutOfMemoryError, match="smaller windows on cpu: out of memory"):
        segment_with_fallback(hopeless, np.ones((32, 32, 32), dtype=np.float32))


def test_a_gpu_bundle_ends_on_the_cpu(bundle: LoadedBundle) -> None:
    on_gpu = replace(bundle, device=torch.device("cuda"))
    plans = [(name, make()) for name, make in fallback_plans(on_gpu)]
    assert [name for name, _ in plans] == ["as configured", "smaller windows", "on the CPU"]
    assert plans[1][1].inferer.sw_batch_size == 1 and list(plans[1][1].inferer.roi_size) == [32] * 3
    assert plans[2][1].device.type == "cpu"
    assert next(plans[2][1].network.parameters()).device.type == "cpu"


def test_lesions_are_counted_and_measured() -> None:
    mask = np.zeros((10, 20, 20), dtype=np.uint8)
    mask[2:4, 2:7, 2:7] = 1  # 50 voxels
    mask[6:9, 10:17, 10:17] = 1  # 147 voxels, the largest area on slices 6-8
    measured = measure_lesions(mask, (2.0, 1.0, 1.0))
    assert measured.count == 2
    assert measured.volume_ml == pytest.approx(197 * 2.0 / 1000)
    assert measured.largest_slice == 6
    assert measure_lesions(np.zeros_like(mask), (1.0, 1.0, 1.0)).largest_slice is None


def test_the_overlay_is_a_png_with_red_where_the_lesion_is() -> None:
    from PIL import Image

    image = np.full((64, 64), 500, dtype=np.uint16)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 30:40] = 1
    png = overlay_png(image, mask)
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert picture.shape == (256, 256, 3)  # scaled up to be readable
    red, grey = picture[60, 140], picture[200, 200]
    assert red[0] > red[1] + 80 and abs(int(grey[0]) - int(grey[1])) < 5


def test_the_seg_uids_are_stable_per_study_and_model_version() -> None:
    first = seg_uids("1.2.3", "model", "0.1.0")
    assert first == seg_uids("1.2.3", "model", "0.1.0")
    assert first != seg_uids("1.2.3", "model", "0.2.0")
    assert first != seg_uids("1.2.4", "model", "0.1.0")
    assert len(set(first)) == 2 and all(len(uid) <= 64 for uid in first)
