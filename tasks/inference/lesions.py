"""What the mask says: lesions counted and measured, and the slice with the largest lesion area
drawn as a PNG (lesions in red) for the artifact and the results folder.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class LesionMeasurements:
    count: int
    volume_ml: float
    largest_slice: int | None  # the slice with the most lesion voxels


def key_image(sop_uids: tuple[str, ...], largest_slice: int | None) -> str | None:
    """The slice to open the viewer on: the largest lesion area, else the middle slice."""
    if not sop_uids:
        return None
    index = largest_slice if largest_slice is not None else len(sop_uids) // 2
    return sop_uids[index] or None


@dataclass(frozen=True)
class Lesion:
    """One finding: a 26-connected component of the mask, numbered by size (1 = largest)."""

    number: int
    voxels: int
    volume_ml: float
    key_slice: int  # the slice where its area is largest (the first such slice)
    slices: tuple[int, ...]  # every slice it appears on, in order

    @property
    def label(self) -> str:
        return f"Lesion {self.number}"


CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected: touching by a corner is one lesion


def label_lesions(
    mask: np.ndarray, spacing_mm: tuple[float, float, float]
) -> tuple[np.ndarray, list[Lesion]]:
    """The mask with each lesion's voxels set to its number (largest first; equal sizes in the
    order the scan meets them, so the same mask always numbers the same way), and the lesions."""
    found, count = ndimage.label(mask > 0, structure=CONNECTIVITY)
    if count == 0:
        return np.zeros(mask.shape, dtype=np.uint16), []
    sizes = np.bincount(found.ravel(), minlength=count + 1)[1:]
    order = sorted(range(count), key=lambda i: (-int(sizes[i]), i))
    renumber = np.zeros(count + 1, dtype=np.uint16)
    for number, index in enumerate(order, start=1):
        renumber[index + 1] = number
    numbered = renumber[found]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    lesions = []
    for number, box in enumerate(ndimage.find_objects(numbered), start=1):
        assert box is not None
        inside = numbered[box] == number
        per_slice = np.count_nonzero(inside.reshape(inside.shape[0], -1), axis=1)
        first = box[0].start
        voxels = int(per_slice.sum())
        lesions.append(
            Lesion(
                number=number,
                voxels=voxels,
                volume_ml=voxels * voxel_ml,
                key_slice=first + int(np.argmax(per_slice)),
                slices=tuple(first + int(i) for i in np.flatnonzero(per_slice)),
            )
        )
    return numbered, lesions


def measurements_of(labels: np.ndarray, lesions: list[Lesion]) -> LesionMeasurements:
    """What `measure_lesions` says, from what `label_lesions` found (no second labelling)."""
    if not lesions:
        return LesionMeasurements(count=0, volume_ml=0.0, largest_slice=None)
    per_slice = np.count_nonzero(labels.reshape(labels.shape[0], -1), axis=1)
    return LesionMeasurements(
        count=len(lesions),
        volume_ml=sum(lesion.volume_ml for lesion in lesions),
        largest_slice=int(np.argmax(per_slice)),
    )


def measure_lesions(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> LesionMeasurements:
    """Lesions are 26-connected components; their volume from the voxel size."""
    _labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
    voxels = int(np.count_nonzero(mask))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    largest = int(np.argmax(per_slice)) if voxels else None
    return LesionMeasurements(count=int(count), volume_ml=voxels * voxel_ml, largest_slice=largest)


def overlay_png(image: np.ndarray, mask: np.ndarray, *, min_side: int = 256) -> bytes:
    """One slice, windowed to its 1st-99th percentiles, lesions in translucent red, as PNG."""
    from PIL import Image

    values = image.astype(np.float32)
    inside = values[values > 0]
    low, high = np.percentile(inside, (1, 99)) if inside.size else (0.0, 1.0)
    grey = np.clip((values - low) / max(float(high - low), 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    red = np.array([255.0, 40.0, 40.0])
    lesion = mask > 0
    rgb[lesion] = 0.45 * rgb[lesion] + 0.55 * red
    picture = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    scale = max(1, -(-min_side // min(picture.size)))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
