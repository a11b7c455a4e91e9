"""Synthetic brain MR volumes with known lesions, for training, tests and the sample study.

Real anatomy: the MNI ICBM152 2009a T1 template (and its white-matter map) that the nilearn
wheel carries, read with nibabel; nilearn itself is never imported. On it: lesions of random
shape (unions of rotated ellipsoids roughened by smooth noise), size, position (in white
matter), contrast and edge, then a random smooth bias field, gamma, global scale and noise, so
that a model learns lesions, not one scanner. Everything is seeded: the same seed, the same
volume and mask.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
}
TEMPLATE_SPACING_MM = 1.0


def template_dir() -> Path:
    """nilearn's bundled data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nilearn wheel (for its MNI template) is not installed: make setup")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@cache
def template(spacing_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 in [0, 1], brain mask, white-matter probability) at `spacing_mm` isotropic.

    Axes are the template's (x: left→right, y: posterior→anterior, z: inferior→superior).
    """
    t1, wm, gm = (_read(name) for name in ("t1", "wm", "gm"))
    zoom = TEMPLATE_SPACING_MM / spacing_mm
    t1 = ndimage.zoom(t1, zoom, order=1) / max(float(t1.max()), 1.0)
    wm = np.clip(ndimage.zoom(wm, zoom, order=1), 0, 1)
    gm = np.clip(ndimage.zoom(gm, zoom, order=1), 0, 1)
    brain = (wm + gm) > 0.3
    return t1.astype(np.float32), brain, wm.astype(np.float32)


def _read(name: str) -> np.ndarray:
    image = nib.load(template_dir() / TEMPLATE_FILES[name])
    if not isinstance(image, nib.Nifti1Image):
        raise RuntimeError(f"{TEMPLATE_FILES[name]} is not a NIfTI-1 image")
    return np.asarray(image.dataobj, dtype=np.float32)


@dataclass(frozen=True)
class SyntheticCase:
    image: np.ndarray  # float32, roughly [0, 1.5]
    mask: np.ndarray  # uint8, 1 = lesion
    lesions: int


def _lesion(
    shape: tuple[int, ...], center: np.ndarray, radius_vox: float, rng: np.random.Generator
) -> np.ndarray:
    """One lesion: 1-3 rotated ellipsoids around `center`, edges roughened by smooth noise."""
    grid = np.indices(shape, dtype=np.float32)
    blob = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.normal(0, radius_vox * 0.4, size=3)
        axes = radius_vox * rng.uniform(0.5, 1.3, size=3)
        rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        d = (grid.reshape(3, -1).T - (center + offset)) @ rotation
        inside = ((d / axes) ** 2).sum(axis=1) <= 1.0
        blob |= inside.reshape(shape)
    noise = ndimage.gaussian_filter(
        rng.normal(size=shape).astype(np.float32), sigma=max(1.0, radius_vox / 3)
    )
    roughened = ndimage.binary_erosion(blob, iterations=1) | (blob & (noise > -0.05))
    return ndimage.binary_opening(roughened, iterations=1) | ndimage.binary_erosion(
        blob, iterations=2
    )


def make_case(
    seed: int, *, spacing_mm: float = 2.0, max_lesions: int = 4, augment: bool = True
) -> SyntheticCase:
    """One synthetic T2/FLAIR-like brain volume with hyperintense lesions (seeded)."""
    rng = np.random.default_rng(seed)
    t1, brain, wm = template(spacing_mm)
    # T1 → FLAIR-like contrast: dark CSF, grey brighter than white, as lesion-seeking sequences.
    image = np.where(brain, 0.35 + 0.45 * (1.0 - wm) * (t1 > 0.15) + 0.25 * wm, t1 * 0.3).astype(
        np.float32
    )
    mask = np.zeros(image.shape, dtype=bool)
    count = int(rng.integers(0, max_lesions + 1))
    candidates = np.argwhere(wm > 0.6)
    for _ in range(count):
        center = candidates[rng.integers(len(candidates))].astype(np.float32)
        radius_mm = rng.uniform(3.0, 12.0)
        lesion = _lesion(image.shape, center, radius_mm / spacing_mm, rng) & brain
        contrast = rng.uniform(0.35, 0.9)
        soft = ndimage.gaussian_filter(lesion.astype(np.float32), sigma=rng.uniform(0.3, 1.0))
        image = image * (1 + contrast * soft)
        mask |= lesion
    if augment:
        image = _augment(image, rng)
    return SyntheticCase(image.astype(np.float32), mask.astype(np.uint8), count)


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner variety: a smooth bias field, gamma, global scale, noise."""
    coarse = rng.normal(0, 1, size=(4, 4, 4)).astype(np.float32)
    field = ndimage.zoom(coarse, np.array(image.shape) / 4, order=3)[
        : image.shape[0], : image.shape[1], : image.shape[2]
    ]
    image = image * np.exp(rng.uniform(0.05, 0.3) * field / max(float(np.abs(field).max()), 1e-6))
    image = np.clip(image, 0, None) ** rng.uniform(0.75, 1.35)
    image = image * rng.uniform(0.7, 1.4)
    image = image + rng.normal(0, rng.uniform(0.005, 0.04), size=image.shape).astype(np.float32)
    return np.clip(image, 0, None)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    p, t = prediction.astype(bool), truth.astype(bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)
