"""Debian's Chromium, driven by Playwright, opens viewer links on the local stack.

The image check compares what OHIF drew with the study's own pixels (windowed as OHIF shows
them): a uniform grey canvas, which a mislabelled codestream produces, fails it.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest

from common.settings import PROJECT_ROOT, Settings
from neuronova.sample_mr import write_sample_mr_study
from tasks.archive.orthanc import OrthancClient
from tests.support.browser import (
    best_match,
    canvas_rgb,
    head_box,
    red_overlay,
    reference_slices,
    wait_for_image,
)
from tests.support.viewing import Viewing, token_of

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("NEURONOVA_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
FIRST_IMAGE_TIMEOUT_S = 60.0


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
    sent: list[tuple[str, dict[str, str]]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers)))
    access = _login_in_page(page, viewing)
    url = _link(page, viewing, access, viewing.study_a)
    link_token = token_of(url)

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
    # No token in the address bar (the link's page took it out of the fragment at once and
    # OHIF never had one in its address), in any address sent, or in a Referer.
    viewer_token = page.evaluate("JSON.parse(sessionStorage.getItem('neuronova.viewer')).token")
    assert page.url == f"{viewing.base}/viewer?StudyInstanceUIDs={viewing.study_a}"
    assert "token" not in page.evaluate("location.href + document.referrer")
    for address, headers in sent:
        sent_address = address.split("#")[0]  # a fragment is never sent
        assert link_token not in sent_address and viewer_token not in sent_address
        assert not headers.get("referer"), (address, headers.get("referer"))
    context.close()


def test_a_viewer_replayed_in_another_browser_draws_nothing(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    """The link and the viewer token, copied out of one browser, open nothing in another."""
    context, page, _ = _page_recording_gate_answers(browser)
    url = _link(page, viewing, _login_in_page(page, viewing), viewing.study_a)
    page.goto(url)
    assert wait_for_image(page, FIRST_IMAGE_TIMEOUT_S) is not None
    stolen = page.evaluate("sessionStorage.getItem('neuronova.viewer')")

    other, thief, thief_answers = _page_recording_gate_answers(browser)
    thief.goto(url)  # the link itself: spent
    thief.get_by_text("link invalid, used or expired").wait_for(timeout=15_000)
    # The viewer token, planted where the viewer looks for it: the gate wants its cookie too.
    thief.evaluate("item => sessionStorage.setItem('neuronova.viewer', item)", stolen)
    thief.goto(f"{viewing.base}/viewer?{urlencode({'StudyInstanceUIDs': viewing.study_a})}")
    assert wait_for_image(thief, 15) is None
    assert thief_answers and all(status == 401 for status in thief_answers), thief_answers
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    thief.screenshot(path=str(ARTIFACTS / "viewer-replayed-elsewhere.png"))
    other.close()
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
    page.goto(_link(page, viewing, access, viewing.study_a))
    assert wait_for_image(page, FIRST_IMAGE_TIMEOUT_S) is not None
    # The tab's token for study A, told it is for study B, on B's address: the gate refuses.
    page.evaluate(
        """study => {
          const held = JSON.parse(sessionStorage.getItem('neuronova.viewer'));
          sessionStorage.setItem('neuronova.viewer', JSON.stringify({...held, study}));
        }""",
        viewing.study_b,
    )
    page.goto("about:blank")  # study A's requests still in flight end here, not below
    gate_answers.clear()
    page.goto(f"{viewing.base}/viewer?{urlencode({'StudyInstanceUIDs': viewing.study_b})}")
    assert wait_for_image(page, 15) is None
    assert gate_answers and all(status in (401, 403) for status in gate_answers), gate_answers
    assert 403 in gate_answers  # the token verified, and its study is not B
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
    page.get_by_text("link invalid, used or expired").wait_for(timeout=15_000)
    assert wait_for_image(page, 5) is None
    assert gate_answers == []  # the link's page never opened the viewer
    context.close()


@pytest.fixture(scope="module")
def brain_mr(
    viewing: Viewing, patient_sources: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The sample brain MR ingested (the AI reads it on the way), same patient as study A."""
    from flows.ingest_study import ingest_study

    folder = tmp_path_factory.mktemp("brain-mr") / "study"
    write_sample_mr_study(folder)
    report = ingest_study(str(folder))
    (reading,) = report["inference"]
    assert reading["status"] == "completed", reading
    return reading | {"folder": folder}


def _key_image_number(settings: Settings, reading: dict[str, Any]) -> int:
    """The InstanceNumber of the reading's key image (the largest lesion area), as indexed."""
    from sqlmodel import select

    from common.db import InferenceResult, session_scope

    with session_scope(settings.resolved_database_url) as session:
        row = session.exec(
            select(InferenceResult).where(
                InferenceResult.seg_sop_instance_uid == reading["seg"]["sop_instance_uid"]
            )
        ).one()
    key = row.key_sop_instance_uid
    assert key, "the reading has no key image"
    for f in reading["folder"].glob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if ds.SOPInstanceUID == key:
            return int(ds.InstanceNumber)
    raise AssertionError("the key image is not one of the MR's instances")


def _seg_mask_for_instance(settings: Settings, reading: dict[str, Any], number: int) -> np.ndarray:
    """The AI's mask on the MR slice with that InstanceNumber, from the SEG stored in Orthanc."""
    folder: Path = reading["folder"]
    sources = {
        int(ds.InstanceNumber): ds
        for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm"))
    }
    with OrthancClient.from_settings(settings) as client:
        seg_id = client.lookup(reading["seg"]["sop_instance_uid"])
        assert seg_id is not None
        seg = hd.seg.Segmentation.from_dataset(
            pydicom.dcmread(io.BytesIO(client.get_instance_file(seg_id)))
        )
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[sources[number].SOPInstanceUID],
        segment_numbers=[1],
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    return np.asarray(pixels[0, ..., 0] > 0)


def test_the_ai_seg_is_drawn_over_the_mr_where_the_model_found_the_lesion(  # type: ignore[no-untyped-def]
    browser, viewing: Viewing, brain_mr: dict[str, Any]
) -> None:
    """The study opens with the AI's SEG already over the MR (no prompt, no double-click), on the
    slice with the largest lesion area (the reading's key image)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    access = _login_in_page(page, viewing)
    page.goto(_link(page, viewing, access, brain_mr["study_instance_uid"]))
    seg_item = page.locator("[data-cy='study-browser-thumbnail-no-image'][data-series='9001']")
    seg_item.wait_for(timeout=FIRST_IMAGE_TIMEOUT_S * 1000)
    assert "AI generated, not for clinical use" in seg_item.inner_text()

    deadline = time.monotonic() + 30
    drawn = None
    while time.monotonic() < deadline:
        rgb = canvas_rgb(page)
        if rgb is not None and red_overlay(rgb).sum() > 20:
            drawn = rgb
            break
        page.wait_for_timeout(200)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "viewer-seg-overlay.png"
    page.screenshot(path=str(shot))
    assert drawn is not None, f"no segmentation drawn over the image (see {shot})"

    # OHIF jumps to a slice with the segment; which one its overlay says ("I: 28 (67/94)").
    match = re.search(r"I:\s*(\d+)\s*\(", page.inner_text("body"))
    assert match, "the viewport does not show the instance number"
    mask = _seg_mask_for_instance(viewing.settings, brain_mr, int(match.group(1)))
    assert mask.any(), "OHIF shows red on a slice where the SEG has no lesion"
    assert page.get_by_role("button", name="Yes").count() == 0  # nothing asked
    key = _key_image_number(viewing.settings, brain_mr)
    assert int(match.group(1)) == key, f"opened on instance {match.group(1)}, key image {key}"
    # Map the mask's lesion centre into the canvas through the head's extent in both.
    grey_canvas = drawn.mean(axis=2) * ~red_overlay(drawn)
    canvas_box, reference = head_box(grey_canvas), reference_slices(brain_mr["folder"])
    number_to_index = {
        int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber): i
        for i, f in enumerate(sorted(brain_mr["folder"].glob("*.dcm")))
    }
    slice_box = head_box(reference[number_to_index[int(match.group(1))]])
    assert canvas_box and slice_box
    rows, cols = np.nonzero(mask)
    scale_r = (canvas_box[1] - canvas_box[0]) / (slice_box[1] - slice_box[0])
    scale_c = (canvas_box[3] - canvas_box[2]) / (slice_box[3] - slice_box[2])
    expected = (
        canvas_box[0] + (rows.mean() + 0.5 - slice_box[0]) * scale_r,
        canvas_box[2] + (cols.mean() + 0.5 - slice_box[2]) * scale_c,
    )
    red_rows, red_cols = np.nonzero(red_overlay(drawn))
    distance_voxels = np.hypot(
        (red_rows.mean() - expected[0]) / scale_r, (red_cols.mean() - expected[1]) / scale_c
    )
    print(
        f"\nSEG drawn on instance {match.group(1)}, {red_rows.size} red pixels, "
        f"{distance_voxels:.2f} voxels from where the SEG puts the lesion; screenshot {shot}"
    )
    assert distance_voxels < 2.0
    context.close()
