"""Debian's Chromium, driven by Playwright, opens viewer links on the local stack.

The image check compares what OHIF drew with the study's own pixels (windowed as OHIF shows
them): a uniform grey canvas, which a mislabelled codestream produces, fails it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlparse

import httpx
import pytest

from common.settings import PROJECT_ROOT
from tests.gateway.browser_tools import (
    CHROMIUM,
    CHROMIUM_ARGS,
    best_match,
    reference_slices,
    wait_for_image,
)
from tests.gateway.conftest import Viewing, token_of

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("NEURONOVA_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
FIRST_IMAGE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: run `make system`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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


def test_a_viewer_link_draws_the_study_in_chromium(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    gate_answers: list[int] = []
    page.on("response", lambda r: gate_answers.append(r.status) if "/wado?" in r.url else None)
    access = _login_in_page(page, viewing)
    url = _link(page, viewing, access, viewing.study_a)

    started = time.monotonic()
    page.goto(url)
    pixels = wait_for_image(page, FIRST_IMAGE_TIMEOUT_S)
    first_image_s = time.monotonic() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "viewer-study-a.png"
    page.screenshot(path=str(shot))
    print(f"\nfirst image drawn {first_image_s:.2f} s after opening the link; screenshot {shot}")

    assert pixels is not None, f"no image drawn within {FIRST_IMAGE_TIMEOUT_S:.0f} s (see {shot})"
    score = best_match(pixels, reference_slices(viewing.folder_a))
    assert score > 0.9, f"what OHIF drew does not look like the study (correlation {score:.2f})"
    assert gate_answers and all(status == 200 for status in gate_answers)
    # OHIF took the token out of the address bar.
    assert "token=" not in urlparse(page.url).query
    context.close()


def _page_recording_gate_answers(browser):  # type: ignore[no-untyped-def]
    """A fresh browser profile and page, and the list the gate's answers are appended to."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    answers: list[int] = []
    page.on(
        "response",
        lambda r: answers.append(r.status) if "/dicom-web/" in r.url or "/wado" in r.url else None,
    )
    return context, page, answers


def test_a_link_for_study_a_does_not_show_study_b(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    context, page, gate_answers = _page_recording_gate_answers(browser)
    access = _login_in_page(page, viewing)
    token = token_of(_link(page, viewing, access, viewing.study_a))
    page.goto(
        f"{viewing.base}/viewer?{urlencode({'StudyInstanceUIDs': viewing.study_b, 'token': token})}"
    )
    assert wait_for_image(page, 15) is None
    assert gate_answers and all(status in (401, 403) for status in gate_answers), gate_answers
    context.close()


def test_a_link_after_logout_shows_no_image(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    context, page, gate_answers = _page_recording_gate_answers(browser)
    access = _login_in_page(page, viewing)
    url = _link(page, viewing, access, viewing.study_a)
    out = httpx.post(
        f"{viewing.base}/api/auth/logout", headers={"Authorization": f"Bearer {access}"}
    )
    assert out.status_code == 200
    page.goto(url)
    assert wait_for_image(page, 15) is None
    assert gate_answers and all(status == 401 for status in gate_answers), gate_answers
    context.close()
