"""Lesions counted and measured; the overlay PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tasks.inference.lesions import label_lesions, measure_lesions, overlay_png


def test_lesions_are_counted_and_measured() -> None:
    mask = np.zeros((10, 20, 20), dtype=np.uint8)
    mask[2:4, 2:7, 2:7] = 1  # 50 voxels
    mask[6:9, 10:17, 10:17] = 1  # 147 voxels, the largest area on slices 6-8
    measured = measure_lesions(mask, (2.0, 1.0, 1.0))
    assert measured.count == 2
    assert measured.volume_ml == pytest.approx(197 * 2.0 / 1000)
    assert measured.largest_slice == 6
    assert measure_lesions(np.zeros_like(mask), (1.0, 1.0, 1.0)).largest_slice is None


def test_lesions_are_numbered_by_size_each_with_its_voxels_and_key_slice() -> None:
    mask = np.zeros((10, 20, 20), dtype=np.uint8)
    mask[2:4, 2:7, 2:7] = 1  # 50 voxels, found first by the scan
    mask[6:9, 10:17, 10:17] = 1  # 147 voxels
    mask[5, 7:9, 7:9] = 0  # (nothing there)
    mask[8, 10:17, 10] = 0  # slice 8 a little smaller: key slice 6
    labels, lesions = label_lesions(mask, (2.0, 1.0, 1.0))
    assert [lesion.label for lesion in lesions] == ["Lesion 1", "Lesion 2"]
    largest, smaller = lesions
    assert (largest.voxels, largest.slices, largest.key_slice) == (140, (6, 7, 8), 6)
    assert (smaller.voxels, smaller.slices, smaller.key_slice) == (50, (2, 3), 2)
    assert largest.volume_ml == pytest.approx(140 * 2.0 / 1000)
    assert np.count_nonzero(labels == 1) == 140 and np.count_nonzero(labels == 2) == 50
    assert set(np.unique(labels)) == {0, 1, 2}
    # The same mask numbers the same way; two lesions touching by a corner are one.
    again, _ = label_lesions(mask.copy(), (2.0, 1.0, 1.0))
    assert np.array_equal(labels, again)
    corner = np.zeros((3, 4, 4), dtype=np.uint8)
    corner[0, 0, 0] = corner[1, 1, 1] = 1
    assert len(label_lesions(corner, (1.0, 1.0, 1.0))[1]) == 1
    empty, none = label_lesions(np.zeros_like(mask), (1.0, 1.0, 1.0))
    assert none == [] and not empty.any()


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


def test_the_key_image_is_the_largest_lesion_slice_else_the_middle_one() -> None:
    from tasks.inference.lesions import key_image

    mask = np.zeros((5, 4, 4), dtype=np.uint8)
    mask[1, :1, :1] = 1
    mask[3, :2, :2] = 1  # the largest area
    measured = measure_lesions(mask, (1.0, 1.0, 1.0))
    sops = ("1.1", "1.2", "1.3", "1.4", "1.5")

    assert key_image(sops, measured.largest_slice) == "1.4"
    assert key_image(sops, measure_lesions(np.zeros_like(mask), (1, 1, 1)).largest_slice) == "1.3"
    assert key_image((), None) is None


def test_measurements_from_the_labelled_lesions_are_those_of_the_mask() -> None:
    from tasks.inference.lesions import measurements_of

    mask = np.zeros((8, 16, 16), dtype=np.uint8)
    mask[1:3, 2:5, 2:5] = 1
    mask[5, 10:14, 10:14] = 1
    spacing = (2.0, 0.5, 0.5)
    labels, lesions = label_lesions(mask, spacing)
    found, measured = measurements_of(labels, lesions), measure_lesions(mask, spacing)
    assert (found.count, found.largest_slice) == (measured.count, measured.largest_slice) == (2, 5)
    assert found.volume_ml == pytest.approx(measured.volume_ml)
    empty = np.zeros_like(mask)
    assert measurements_of(*label_lesions(empty, spacing)) == measure_lesions(empty, spacing)
