"""Debian's Chromium, driven by Playwright, opens viewer links on the local stack.

The image check compares what OHIF drew with the study's own pixels (windowed as OHIF shows
them): a uniform grey canvas, which a mislabelled codestream produces, fails it.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlparse

import httpx
import numpy as np
import pydicom
import pytest

from common.settings import PROJECT_ROOT
from tests.gateway.conftest import Viewing, token_of

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("NEURONOVA_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
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
VIEWPORT = "[data-viewport-uid], .viewport-wrapper"
FIRST_IMAGE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: run `make system`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _grey(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def _reference_slices(folder: Path) -> list[np.ndarray]:
    """The study's slices as OHIF windows them (8-bit, the dataset's window centre/width)."""
    slices = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
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
    their non-black extent and sampled onto the same grid."""
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


def _login_in_page(page, viewing: Viewing, username: str = "cara") -> str:  # type: ignore[no-untyped-def]
    """Log in with the browser's own request context (same origin, as a portal page would)."""
    response = page.request.post(
        f"{viewing.base}/api/auth/login",
        data={"username": username, "password": "gateway test password"},
    )
    assert response.status == 200
    access: str = response.json()["access_token"]
    return access


def _link(page, viewing: Viewing, access: str, study: str) -> str:  # type: ignore[no-untyped-def]
    response = page.request.post(
        f"{viewing.base}/api/studies/{study}/viewer-link",
        headers={"Authorization": f"Bearer {access}"},
    )
    assert response.status == 200
    url: str = response.json()["url"]
    return url


def _canvas_pixels(page) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    """What cornerstone drew in the viewport's canvas (no overlays, no tooltips), or None."""
    data = page.evaluate(
        """() => {
            const canvas = document.querySelector('canvas.cornerstone-canvas');
            return canvas && canvas.width > 0 ? canvas.toDataURL('image/png') : null;
        }"""
    )
    if not data:
        return None
    return _grey(base64.b64decode(data.split(",", 1)[1]))


def _wait_for_image(page, timeout_s: float) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    """The canvas pixels once an image (not just black) is drawn, or None at timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pixels = _canvas_pixels(page)
        if pixels is not None and (pixels > 8).mean() > 0.02 and pixels.std() > 10:
            return pixels
        page.wait_for_timeout(100)
    return None


def test_a_viewer_link_draws_the_study_in_chromium(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    gate_answers: list[int] = []
    page.on("response", lambda r: gate_answers.append(r.status) if "/wado?" in r.url else None)
    access = _login_in_page(page, viewing)
    url = _link(page, viewing, access, viewing.study_a)

    started = time.monotonic()
    page.goto(url)
    pixels = _wait_for_image(page, FIRST_IMAGE_TIMEOUT_S)
    first_image_s = time.monotonic() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "viewer-study-a.png"
    page.screenshot(path=str(shot))
    print(f"\nfirst image drawn {first_image_s:.2f} s after opening the link; screenshot {shot}")

    assert pixels is not None, f"no image drawn within {FIRST_IMAGE_TIMEOUT_S:.0f} s (see {shot})"
    score = best_match(pixels, _reference_slices(viewing.folder_a))
    assert score > 0.9, f"what OHIF drew does not look like the study (correlation {score:.2f})"
    assert gate_answers and all(status == 200 for status in gate_answers)
    # OHIF took the token out of the address bar.
    assert "token=" not in urlparse(page.url).query
    context.close()


def test_a_link_for_study_a_does_not_show_study_b(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    gate_answers: list[int] = []
    page.on(
        "response",
        lambda r: (
            gate_answers.append(r.status) if "/dicom-web/" in r.url or "/wado" in r.url else None
        ),
    )
    access = _login_in_page(page, viewing)
    token = token_of(_link(page, viewing, access, viewing.study_a))
    page.goto(
        f"{viewing.base}/viewer?{urlencode({'StudyInstanceUIDs': viewing.study_b, 'token': token})}"
    )
    assert _wait_for_image(page, 15) is None
    assert gate_answers and all(status in (401, 403) for status in gate_answers), gate_answers
    context.close()


def test_a_link_after_logout_shows_no_image(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    gate_answers: list[int] = []
    page.on(
        "response",
        lambda r: (
            gate_answers.append(r.status) if "/dicom-web/" in r.url or "/wado" in r.url else None
        ),
    )
    access = _login_in_page(page, viewing)
    url = _link(page, viewing, access, viewing.study_a)
    out = httpx.post(
        f"{viewing.base}/api/auth/logout", headers={"Authorization": f"Bearer {access}"}
    )
    assert out.status_code == 200
    page.goto(url)
    assert _wait_for_image(page, 15) is None
    assert gate_answers and all(status == 401 for status in gate_answers), gate_answers
    context.close()
