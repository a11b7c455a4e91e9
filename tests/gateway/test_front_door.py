"""The front door in Chromium, through nginx, as a clinician uses it: sign in at the gateway's
root, the worklist of one's own patients, open a study in OHIF, sign out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.settings import PROJECT_ROOT
from tests.support.axe import severe_violations
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
    gate_answers: list[tuple[str, int]] = []
    viewer.on(
        "response",
        lambda r: gate_answers.append((r.url, r.status)) if "/dicom-web/" in r.url else None,
    )
    viewer.goto(f"{viewing.base}/worklist")
    viewer.locator(f'tr[data-study="{viewing.study_a}"]').get_by_role("button").click()
    pixels = wait_for_image(viewer, 60.0)
    viewer.screenshot(path=str(ARTIFACTS / "worklist-open.png"))
    assert pixels is not None, "no image drawn after Open"
    assert best_match(pixels, reference_slices(viewing.folder_a)) > 0.9
    assert viewer.url.startswith(f"{viewing.base}/viewer?StudyInstanceUIDs={viewing.study_a}")
    assert "token" not in viewer.url
    # OHIF's look-up of the patient's other studies is answered (narrowed by the gate), and no
    # request of the viewer was refused.
    for _ in range(50):
        if any("00100020=" in url for url, _ in gate_answers):
            break
        viewer.wait_for_timeout(200)
    assert [s for u, s in gate_answers if "00100020=" in u] == [200], gate_answers
    assert all(status == 200 for _, status in gate_answers), gate_answers

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


def test_a_new_study_of_her_patient_follows_its_ai_run_without_a_reload(  # type: ignore[no-untyped-def]
    browser, viewing: Viewing
) -> None:
    """A clinician's worklist listens to her alert stream: a new study of her patient appears
    when its AI reading is queued, its row follows the run (running, then the result with a
    notice); nothing of another patient's study reaches the page."""
    from sqlmodel import select

    from common.db import InferenceResult, session_scope
    from tasks.inference.alerts import AI_RESULT, AlertPublisher
    from tasks.inference.results import AiState, set_ai_state
    from tests.support.web import IndexedStudy, add_reading, index_study
    from webapp import accounts

    settings = viewing.settings
    url = settings.resolved_database_url
    mine = IndexedStudy(
        "NN-LIVE-0001", "1.2.826.0.1.7001", "1.2.826.0.1.7001.1", ("1.2.826.0.1.7001.1.1",)
    )
    other = IndexedStudy(
        "NN-LIVE-0002", "1.2.826.0.1.7002", "1.2.826.0.1.7002.1", ("1.2.826.0.1.7002.1.1",)
    )
    with session_scope(url) as session:
        if accounts.find_user(session, "lina") is None:
            accounts.add_user(session, "lina", "clinician", PASSWORD)
    with session_scope(url) as session:
        accounts.grant_patient(session, "lina", mine.patient_id)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _sign_in(page, viewing, "lina")
    page.wait_for_url(f"{viewing.base}/worklist")
    assert page.locator("tr[data-study]").count() == 0
    page.wait_for_timeout(1500)  # the page's stream is open (EventSource connects on load)
    notice = page.get_by_role("status").first
    row = page.locator(f'tr[data-study="{mine.study}"]')

    def move_both(state: AiState) -> None:  # as the flows do: ingest, then run_inference
        for study in (other, mine):
            set_ai_state(settings, study.study, state)

    for study in (other, mine):  # arrived and indexed
        with session_scope(url) as session:
            known = session.exec(
                select(InferenceResult).where(InferenceResult.study_instance_uid == study.study)
            ).first()
        if known is None:
            index_study(url, study)
            add_reading(url, study, lesions=2, volume_ml=4.2)  # written before "done" below
    move_both(AiState.QUEUED)
    row.wait_for(timeout=15_000)
    assert "AI queued" in row.inner_text()
    assert "New study" in notice.inner_text()

    move_both(AiState.RUNNING)
    page.wait_for_function(
        'uid => document.querySelector(`tr[data-study="${uid}"] td.ai-running`)',
        arg=mine.study,
        timeout=15_000,
    )
    move_both(AiState.DONE)
    with AlertPublisher.from_settings(settings) as publisher:
        for study in (other, mine):
            publisher.publish(AI_RESULT, study.study, study.patient_id, {"lesion_count": 2})
    page.wait_for_function(
        "() => document.getElementById('notice').textContent.includes('New AI result')",
        timeout=15_000,
    )
    assert "2 lesions, 4.2 mL" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "worklist-live.png"))
    assert page.locator("tr[data-study]").count() == 1
    assert page.locator(f'tr[data-study="{other.study}"]').count() == 0
    assert other.patient_id not in page.content()
    context.close()


def test_the_sign_in_worklist_and_break_glass_pages_pass_axe(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    """axe-core (npm, injected past our CSP) finds nothing serious or critical, and signing in
    works from the keyboard alone."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.goto(f"{viewing.base}/")
    assert severe_violations(page) == []
    page.goto(f"{viewing.base}/")
    # Focused on arrival: the browser applies `autofocus` at its next rendering step, which can
    # come after the load event.
    page.wait_for_function("document.activeElement && document.activeElement.id === 'username'")
    page.keyboard.type("cara")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{viewing.base}/worklist")
    assert severe_violations(page) == []
    page.keyboard.press("Tab")  # the first stop: the skip link, then the page's controls
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.goto(f"{viewing.base}/worklist?mrn=nobody")  # the empty result too
    assert severe_violations(page) == []
    page.goto(f"{viewing.base}/worklist/break-glass")
    page.get_by_role("button", name="Open for").click()  # the browser asks for both fields
    page.get_by_label("Patient's full MRN").fill("NN-TEST")
    page.get_by_label("Reason").fill("unconscious patient in the ER")
    page.get_by_role("button", name="Open for").click()
    assert "No study in the archive" in page.get_by_role("alert").inner_text()
    page.screenshot(path=str(ARTIFACTS / "break-glass.png"))
    assert severe_violations(page) == []
    context.close()


def test_a_radiologist_reviews_the_ai_reading_on_the_worklist(browser, viewing: Viewing) -> None:  # type: ignore[no-untyped-def]
    """The review flow in Chromium: awaiting review on the worklist, the review panel (axe-core
    finds nothing serious), Accept one lesion, Reject another with a reason, Open on a lesion
    (OHIF opens on its key slice); the row then says who decided. The reading is taken out
    again at the end: the other tests open study A on its default slice."""
    from pydicom.uid import generate_uid
    from sqlmodel import delete, select

    from common.db import InferenceFinding, InferenceResult, ReadingVerdict, session_scope
    from tests.support.web import Finding, record_reading

    url = viewing.settings.resolved_database_url
    key_slices = (viewing.instances_a[3], viewing.instances_a[8])
    reading_id = record_reading(
        url,
        viewing.study_a,
        viewing.series_a,
        viewing.patient_a,
        [
            Finding(generate_uid(), volume, sop)
            for sop, volume in zip(key_slices, (4.25, 1.25), strict=True)
        ],
        model_version="review-test",
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    try:
        page = context.new_page()
        _sign_in(page, viewing, "rex")
        page.wait_for_url(f"{viewing.base}/worklist")
        page.get_by_label("Awaiting review").check()
        page.get_by_role("button", name="Search").click()
        row = page.locator(f'tr[data-study="{viewing.study_a}"]')
        assert "awaiting review" in row.inner_text()
        row.get_by_role("link", name="Review the AI reading").click()
        page.wait_for_url("**/worklist/review?study=*")
        assert severe_violations(page) == []
        panel = page.locator(f"#reading-{reading_id}")
        assert "Lesion 1" in panel.inner_text() and "4.25 mL" in panel.inner_text()

        panel.get_by_role("button", name="Accept Lesion 1").click()
        page.wait_for_url("**/worklist/review?study=*")
        lesion_2 = page.locator("tr[data-finding]").nth(1)
        lesion_2.get_by_text("Reject…").click()
        lesion_2.get_by_label("Why reject Lesion 2?").fill("a vessel seen end-on, not a lesion")
        lesion_2.get_by_role("button", name="Reject Lesion 2").click()
        page.wait_for_url("**/worklist/review?study=*")
        findings = page.locator("tr[data-finding]")
        assert "Accepted by rex" in findings.nth(0).inner_text()
        assert "Rejected by rex" in findings.nth(1).inner_text()
        assert "a vessel seen end-on" in findings.nth(1).inner_text()
        page.screenshot(path=str(ARTIFACTS / "review-panel.png"), full_page=True)
        assert severe_violations(page) == []

        page.locator("tr[data-finding]").nth(1).get_by_role(
            "button", name="Open the viewer on Lesion 2"
        ).click()
        page.wait_for_url("**/viewer?*", timeout=30_000)
        assert f"initialSOPInstanceUID={key_slices[1]}" in page.url
        page.goto(f"{viewing.base}/worklist/review?study={viewing.study_a}")
        page.get_by_role("button", name="Accept the whole reading").click()
        page.goto(f"{viewing.base}/worklist")
        assert "accepted by rex" in page.locator(f'tr[data-study="{viewing.study_a}"]').inner_text()
    finally:
        context.close()
        with session_scope(url) as session:
            session.exec(delete(ReadingVerdict).where(ReadingVerdict.result_id == reading_id))  # type: ignore[call-overload]
            session.exec(delete(InferenceFinding).where(InferenceFinding.result_id == reading_id))  # type: ignore[call-overload]
            session.exec(delete(InferenceResult).where(InferenceResult.id == reading_id))  # type: ignore[call-overload]
        with session_scope(url) as session:
            assert (
                session.exec(
                    select(InferenceResult).where(InferenceResult.id == reading_id)
                ).first()
                is None
            )


def test_ohif_files_are_sent_precompressed_gzip_or_brotli_and_hashed_ones_cached_for_a_year(
    viewing: Viewing,
) -> None:
    import httpx

    from neuronova.ohif import ohif_root

    root = ohif_root()
    bundle = next(p for p in sorted(root.glob("*.bundle.*.js")) if p.stat().st_size > 100_000)
    answer = httpx.get(
        f"{viewing.base}/{bundle.name}", headers={"Accept-Encoding": "gzip"}, timeout=30
    )
    assert answer.status_code == 200 and answer.headers["Content-Encoding"] == "gzip"
    # The precompressed file as it is (gzip_static), not a compression made for this request.
    packed = bundle.with_name(bundle.name + ".gz")
    assert int(answer.headers["Content-Length"]) == packed.stat().st_size
    assert answer.content == bundle.read_bytes()  # httpx unpacks it: the same bundle
    assert "max-age=31536000" in answer.headers["Cache-Control"]
    # A browser that takes brotli gets the .br copy (brotli_static, the stack's Debian module).
    answer = httpx.get(
        f"{viewing.base}/{bundle.name}", headers={"Accept-Encoding": "br, gzip"}, timeout=30
    )
    assert answer.status_code == 200 and answer.headers["Content-Encoding"] == "br"
    packed = bundle.with_name(bundle.name + ".br")
    assert int(answer.headers["Content-Length"]) == packed.stat().st_size
    assert packed.stat().st_size < bundle.with_name(bundle.name + ".gz").stat().st_size
    assert answer.content == bundle.read_bytes()  # httpx unpacks brotli too: the same bundle
    assert "Accept-Encoding" in answer.headers.get("Vary", "")
    # A client that takes no compression gets the plain file.
    plain = httpx.get(
        f"{viewing.base}/{bundle.name}", headers={"Accept-Encoding": "identity"}, timeout=30
    )
    assert "Content-Encoding" not in plain.headers and plain.content == bundle.read_bytes()
    # Our configuration is never precompressed (it is rewritten when it changes).
    assert not (root / "app-config.js.gz").exists() and not (root / "app-config.js.br").exists()
