"""The AI's findings in OHIF, in Chromium through nginx: a brain MR read with two lesions opens
with the SEG over it and the TID 1500 SR's findings in the measurement panel ("Lesion 1 —
4.2 mL", the longest diameter); a click on a row goes to that lesion's key slice.

The reading is made by the production writers (tasks/dicom/seg.py, tasks/dicom/sr.py) from the
sample MR with a second lesion added, and stored through the verified ingest like the AI's own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from common.db import ReadingVerdict, session_scope
from common.settings import PROJECT_ROOT
from neuronova.sample_mr import write_sample_mr_study
from tasks.dicom.sr import ModelIdentity, viewer_title
from tasks.inference.lesions import Lesion
from tasks.inference.results import lesion_tracking_uids
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import collect_inputs
from tests.support.ai_reading import read_with_mask
from tests.support.browser import wait_for_image
from tests.support.viewing import Viewing
from tests.support.web import Finding, record_reading

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("NEURONOVA_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
MODEL = ModelIdentity("brain-lesion", "panel-test", "ab" * 32)
PATIENT = "NN-TEST-D"


@dataclass(frozen=True)
class ReadStudy:
    study: str
    lesions: list[Lesion]
    key_instance_numbers: list[int]  # each lesion's key slice, as OHIF numbers it
    series: str  # the MR series read
    seg: tuple[str, str]  # series, SOP instance
    sr: tuple[str, str]
    reading_id: int


@pytest.fixture(scope="module")
def read_study(viewing: Viewing, tmp_path_factory: pytest.TempPathFactory) -> ReadStudy:
    """The sample MR of a patient of its own, with a second lesion, and its SEG and SR."""
    folder = tmp_path_factory.mktemp("study-d")
    files, mask_path = write_sample_mr_study(folder / "mr")
    study, series = str(generate_uid()), str(generate_uid())
    for path in files:
        # Instances, a study and a patient of their own: the sample MR itself (the same UIDs
        # every time) may be in the archive already, from another test of the session.
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = PATIENT, "Test^D"
        ds.save_as(path, enforce_file_format=True)
    mask = np.load(mask_path)
    mask[60:63, 40:46, 40:46] = 1  # far from the sample's own lesion: a second one
    reading = read_with_mask(files, mask, MODEL)
    sources, lesions, uids, seg, sr = (
        reading.sources,
        reading.lesions,
        reading.tracking_uids,
        reading.seg,
        reading.sr,
    )
    assert len(lesions) == 2
    seg_series, seg_sop = str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)
    sr_series, sr_sop = str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)
    seg.save_as(folder / "mr" / "seg.dcm")
    sr.save_as(folder / "mr" / "sr.dcm")
    outcomes = ingest_batch(viewing.settings, collect_inputs(folder / "mr"))
    assert {o.status for o in outcomes} == {"stored"}, {o.reason for o in outcomes}
    numbers = [int(sources[lesion.key_slice].InstanceNumber) for lesion in lesions]
    reading_id = record_reading(  # as the flow records it
        viewing.settings.resolved_database_url,
        study,
        series,
        PATIENT,
        [
            Finding(uid, round(lesion.volume_ml, 3), str(sources[lesion.key_slice].SOPInstanceUID))
            for lesion, uid in zip(lesions, uids, strict=True)
        ],
        model_name=MODEL.name,
        model_version=MODEL.version,
        model_sha256=MODEL.bundle_sha256,
        seg_series_uid=seg_series,
        seg_sop_instance_uid=seg_sop,
        sr_series_uid=sr_series,
        sr_sop_instance_uid=sr_sop,
    )
    return ReadStudy(
        study, lesions, numbers, series, (seg_series, seg_sop), (sr_series, sr_sop), reading_id
    )


def test_the_measurement_panel_lists_each_lesion_and_a_click_goes_to_its_slice(  # type: ignore[no-untyped-def]
    browser, viewing: Viewing, read_study: ReadStudy
) -> None:
    with viewing.client() as client:
        access = viewing.login(client, "rex")["access_token"]
        link = viewing.link(client, access, read_study.study)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        page.goto(link)
        page.wait_for_url("**/viewer?*", timeout=30_000)
        assert wait_for_image(page, 60) is not None, "OHIF drew no image"
        page.locator('[data-cy="trackedMeasurements-btn"]').click(timeout=30_000)
        rows = page.locator('[data-cy^="measurement-table-row-"]')
        rows.first.wait_for(timeout=30_000)
        assert rows.count() == len(read_study.lesions)
        for index, lesion in enumerate(read_study.lesions):
            row = page.locator(f'[data-cy="measurement-table-row-{index}"]')
            title = row.locator('[data-cy="data-row-title"]').inner_text()
            assert title.strip() == viewer_title(lesion), title
            details = row.locator('[data-cy="data-row-details-primary"]').all_inner_texts()
            assert any(re.search(r"\d+(\.\d+)? mm", line) for line in details), details
        page.screenshot(path=str(ARTIFACTS / "ohif-measurement-panel.png"))
        for index, number in enumerate(read_study.key_instance_numbers):
            page.locator(f'[data-cy="measurement-table-row-{index}"] [data-cy="data-row"]').click()
            page.wait_for_function(
                "n => (document.querySelector('[title=\"Instance Number\"]')?.textContent || '')"
                ".startsWith('I:' + n + ' ')",
                arg=number,
                timeout=15_000,
            )
    finally:
        context.close()


def test_any_dicomweb_client_retrieves_the_seg_and_the_sr(
    viewing: Viewing, read_study: ReadStudy
) -> None:
    """The AI's objects come through the gate like the images (dicomweb-client, a radiologist's
    viewer token): the SR reads back as the TID 1500 report with a group per lesion."""
    import highdicom as hd
    import requests
    from dicomweb_client.api import DICOMwebClient

    with viewing.client() as browser:
        access = viewing.login(browser, "rex")["access_token"]
        token = viewing.open(browser, access, read_study.study)
        key = browser.cookies["neuronova_viewer"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    session.cookies.set("neuronova_viewer", key)
    client = DICOMwebClient(url=f"{viewing.base}/dicom-web", session=session)
    (seg,) = client.retrieve_series(read_study.study, read_study.seg[0])
    assert seg.SOPInstanceUID == read_study.seg[1]
    assert len(seg.SegmentSequence) == len(read_study.lesions)
    sr = client.retrieve_instance(read_study.study, *read_study.sr)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    volumes = [
        g.get_measurements()[0].value for g in report.get_volumetric_roi_measurement_groups()
    ]
    assert volumes == pytest.approx([lesion.volume_ml for lesion in read_study.lesions], 1e-3)


def test_a_radiologist_corrects_the_ai_seg_in_ohif_and_the_reading_is_corrected(  # type: ignore[no-untyped-def]
    browser, viewing: Viewing, read_study: ReadStudy
) -> None:
    """OHIF's segmentation tools on the AI's SEG: the brush adds to Lesion 1, Export → DICOM
    SEG → Save stores it through the gate (STOW-RS with the viewer's token), and the reading
    becomes `corrected` with the volumes of the reader's SEG."""
    import time

    from sqlmodel import select

    with viewing.client() as client:
        access = viewing.login(client, "rex")["access_token"]
        link = viewing.link(client, access, read_study.study)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    saved: list[int] = []
    try:
        page = context.new_page()
        page.on(
            "response",
            lambda r: (
                saved.append(r.status)
                if r.request.method == "POST" and r.url.endswith("/dicom-web/studies")
                else None
            ),
        )
        page.goto(link)
        page.wait_for_url("**/viewer?*", timeout=30_000)
        assert wait_for_image(page, 60) is not None, "OHIF drew no image"
        page.locator('[data-cy="panelSegmentationWithToolsLabelMap-btn"]').click(timeout=30_000)
        page.locator('[data-cy="data-row"]', has_text="Lesion 1").first.click(timeout=30_000)
        page.locator('[data-cy="Brush-btn"]').click()
        box = page.locator("canvas.cornerstone-canvas").first.bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        for step in range(1, 31):
            page.mouse.move(x + 4 * step, y + 2 * step)
        page.mouse.up()
        page.locator('[data-cy="segmentation-collapsed-more-btn-Labelmap"]').click()
        page.get_by_role("menuitem", name="Export").click()
        page.get_by_role("menuitem", name="DICOM SEG").click()
        page.locator('[data-cy="input-dialog-save-button"]').click(timeout=30_000)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not saved:
            page.wait_for_timeout(250)
        assert saved == [200], saved
        page.screenshot(path=str(ARTIFACTS / "ohif-corrected-seg.png"))
    finally:
        context.close()
    with session_scope(viewing.settings.resolved_database_url) as session:
        (verdict,) = session.exec(
            select(ReadingVerdict).where(ReadingVerdict.result_id == read_study.reading_id)
        ).all()
    assert verdict.verdict == "corrected" and verdict.username == "rex"
    assert verdict.corrected_volumes is not None
    volumes = json.loads(verdict.corrected_volumes)
    first, second = read_study.lesions
    uids = lesion_tracking_uids(read_study.study, read_study.series, MODEL.name, MODEL.version, 2)
    assert volumes[uids[0]] > first.volume_ml  # the brush added to Lesion 1
    assert volumes[uids[1]] == pytest.approx(second.volume_ml, rel=0.01)  # untouched
