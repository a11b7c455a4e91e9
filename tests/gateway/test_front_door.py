"""The front door in Chromium, through nginx, as a clinician uses it: sign in at the gateway's
root, the worklist of one's own patients, open a study in OHIF, sign out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.settings import PROJECT_ROOT
from tests.support.browser import best_match, reference_slices, wait_for_image
from tests.support.viewing import Viewing

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("NEURONOVA_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
PASSWORD = "gateway test password"  # the viewing fixture's users


def _sign_in(page, viewing: Viewing, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{viewing.base}/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_a_clinician_signs_in_sees_her_studies_opens_one_and_signs_out(
    browser, viewing: Viewing
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    worklist = context.new_page()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    _sign_in(worklist, viewing, "cara", "not the password")
    assert (
        worklist.get_by_role("alert")
        .inner_text(timeout=10_000)
        .startswith("Invalid user name or password")
    ), worklist.content()
    _sign_in(worklist, viewing, "cara")
    worklist.wait_for_url(f"{viewing.base}/worklist")
    worklist.screenshot(path=str(ARTIFACTS / "worklist-cara.png"))
    rows = worklist.locator("tr[data-study]")
    assert rows.count() >= 1
    shown = {rows.nth(i).get_attribute("data-study") for i in range(rows.count())}
    assert viewing.study_a in shown and viewing.study_b not in shown
    assert viewing.study_b not in worklist.content()
    # Another clinician's patient stays out of a search too.
    worklist.get_by_label("MRN").fill("NN-TEST-B")
    worklist.get_by_role("button", name="Search").click()
    assert worklist.locator("tr[data-study]").count() == 0
    assert viewing.study_b not in worklist.content()

    # Open the study from the worklist, in a second tab (the worklist stays open).
    viewer = context.new_page()
    viewer.goto(f"{viewing.base}/worklist")
    viewer.locator(f'tr[data-study="{viewing.study_a}"]').get_by_role("button").click()
    pixels = wait_for_image(viewer, 60.0)
    viewer.screenshot(path=str(ARTIFACTS / "worklist-open.png"))
    assert pixels is not None, "no image drawn after Open"
    assert best_match(pixels, reference_slices(viewing.folder_a)) > 0.9
    assert viewer.url.startswith(f"{viewing.base}/viewer?StudyInstanceUIDs={viewing.study_a}")
    assert "token" not in viewer.url

    # Sign out from the worklist: the open viewer's next request is refused.
    worklist.get_by_role("button", name="Sign out").click()
    worklist.wait_for_url(f"{viewing.base}/")
    assert worklist.get_by_label("User name").is_visible()
    status = viewer.evaluate(
        """async (study) => {
            const token = JSON.parse(sessionStorage.getItem('neuronova.viewer')).token;
            const answer = await fetch(`/dicom-web/studies/${study}/series`,
                                       {headers: {Authorization: `Bearer ${token}`}});
            return answer.status;
        }""",
        viewing.study_a,
    )
    assert status == 401
    worklist.goto(f"{viewing.base}/worklist")
    assert worklist.url == f"{viewing.base}/"  # back to the sign-in page
    context.close()
