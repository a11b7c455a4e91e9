"""Helpers to drive Debian's Chromium with Playwright and read what OHIF drew (tests, bench)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

CHROMIUM = Path("/usr/bin/chromium")
# The flags of a closed network: no background calls home, no sandbox as root, software GL.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def grey(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def _canvas_png(page: Any) -> bytes | None:
    """The viewport's canvas as PNG (cornerstone draws images and segmentations into it); None
    while there is none, or while the page is between documents (a link's page goes on to
    OHIF's: a question asked during that navigation has no page to answer it)."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        data = page.evaluate(
            """() => {
                const canvas = document.querySelector('canvas.cornerstone-canvas');
                return canvas && canvas.width > 0 ? canvas.toDataURL('image/png') : null;
            }"""
        )
    except PlaywrightError as err:
        if "context was destroyed" in str(err) or "navigating" in str(err):
            return None
        raise
    return base64.b64decode(data.split(",", 1)[1]) if data else None


def canvas_pixels(page: Any) -> np.ndarray | None:
    """What cornerstone drew in the viewport's canvas (no overlays, no tooltips), or None."""
    png = _canvas_png(page)
    return grey(png) if png is not None else None


def wait_for_image(page: Any, timeout_s: float, poll_ms: int = 50) -> np.ndarray | None:
    """The canvas pixels once an image (not just black) is drawn, or None at timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pixels = canvas_pixels(page)
        if pixels is not None and (pixels > 8).mean() > 0.02 and pixels.std() > 10:
            return pixels
        page.wait_for_timeout(poll_ms)
    return None


def reference_slices(folder: Path) -> list[np.ndarray]:
    """The study's slices as OHIF windows them (8-bit, the dataset's window centre/width)."""
    slices = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
        hu = ds.pixel_array * float(slope) + float(intercept)
        low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        slices.append(np.clip((hu - low) / float(ds.WindowWidth), 0, 1) * 255)
    return slices


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def best_match(drawn: np.ndarray, references: list[np.ndarray]) -> float:
    """Highest correlation between the drawn head and any reference slice, both cropped to
    their non-black extent and sampled onto the same grid (a uniform canvas scores 0)."""
    box = _bbox(drawn > 8)
    if box is None:
        return 0.0
    top, bottom, left, right = box
    shown = drawn[top:bottom, left:right]
    best = 0.0
    for reference in references:
        ref_box = _bbox(reference > 8)
        if ref_box is None:
            continue
        r0, r1, c0, c1 = ref_box
        rows = np.linspace(r0, r1 - 1, shown.shape[0]).round().astype(int)
        cols = np.linspace(c0, c1 - 1, shown.shape[1]).round().astype(int)
        sampled = reference[np.ix_(rows, cols)]
        if shown.std() == 0 or sampled.std() == 0:
            continue
        best = max(best, float(np.corrcoef(shown.ravel(), sampled.ravel())[0, 1]))
    return best


def canvas_rgb(page: Any) -> np.ndarray | None:
    """The viewport's canvas in colour (segmentations are drawn into it), or None."""
    from PIL import Image

    png = _canvas_png(page)
    if png is None:
        return None
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def red_overlay(rgb: np.ndarray) -> np.ndarray:
    """Where a red segment is drawn over the grey image."""
    return (rgb[..., 0] > rgb[..., 1] + 40) & (rgb[..., 0] > rgb[..., 2] + 40)


def head_box(grey_image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the non-black part of an image."""
    return _bbox(grey_image > 8)
