"""A radiologist saves a corrected segmentation from the viewer: STOW-RS of one SEG with the
viewer token, through nginx, stored verified; the reading becomes `corrected` with the volumes
the SEG measures. Any other SOP class, study, role or count of files is refused, audited, and
nothing is stored."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from sqlmodel import select

from common.db import (
    AuditEvent,
    Instance,
    ReadingVerdict,
    session_scope,
)
from neuronova.sample import ct_slice_dataset, head_phantom
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import collect_inputs
from tests.support.viewing import Viewing
from tests.support.web import Finding, record_reading
from tests.webapp.test_multipart import BOUNDARY, related_body

pytestmark = pytest.mark.integration

COOKIE = "neuronova_viewer"
TRACKING = (generate_uid(), generate_uid())


@dataclass(frozen=True)
class Reviewed:
    """Study C: four CT slices of its own patient, read by the AI (two lesions)."""

    study: str
    series: str
    sources: list[pydicom.Dataset]
    reading_id: int


@pytest.fixture(scope="module")
def reviewed(viewing: Viewing, tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    folder = tmp_path_factory.mktemp("study-c")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for index in range(4):
        ds = ct_slice_dataset(head_phantom(64, 64, 0.2 * index), index, study, series, frame)
        ds.PatientID, ds.PatientName = "NN-TEST-C", "Test^C"
        ds.save_as(folder / f"C{index}.dcm", enforce_file_format=True)
    sources = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    outcomes = ingest_batch(viewing.settings, collect_inputs(folder))
    assert {o.status for o in outcomes} == {"stored"}
    reading_id = record_reading(
        viewing.settings.resolved_database_url,
        study,
        series,
        "NN-TEST-C",
        [Finding(uid, 0.5) for uid in TRACKING],
        model_version="correction-test",
    )
    return Reviewed(study, series, sources, reading_id)


def _viewer(viewing: Viewing, username: str, study: str) -> tuple[str, str]:
    """A viewer token of `username` for `study`, and its browser's key."""
    with viewing.client() as browser:
        access = viewing.login(browser, username)["access_token"]
        token = viewing.open(browser, access, study)
        return token, browser.cookies[COOKIE]


def corrected_seg(sources: list[pydicom.Dataset], study: str | None = None) -> bytes:
    """A SEG as a viewer saves it: a manual segmentation of the sources, Lesion 1 made larger
    (2 slices x 10 x 12 pixels), Lesion 2 kept (3 x 3 on one slice), in a series of its own."""
    mask = np.zeros((len(sources), 64, 64), dtype=np.uint8)
    mask[1:3, 10:20, 10:22] = 1
    mask[3, 40:43, 40:43] = 2
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Lesion {number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=TRACKING[number - 1],
            tracking_id=f"Lesion {number}",
        )
        for number in (1, 2)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=301,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="OHIF",
        manufacturer_model_name="OHIF Viewer",
        software_versions="3.13.2",
        device_serial_number="none",
        series_description="Corrected segmentation",
    )
    if study is not None:
        # A new element: highdicom shares the sources' elements, and setting the value of one
        # would change the source image too.
        seg["StudyInstanceUID"] = pydicom.DataElement(0x0020000D, "UI", study)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def _save(viewing: Viewing, viewer: tuple[str, str], files: list[bytes]) -> httpx.Response:
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'
    body = related_body(files)
    return httpx.post(
        f"{viewing.base}/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": content_type,
            "Authorization": f"Bearer {viewer[0]}",
            "Cookie": f"{COOKIE}={viewer[1]}",
        },
        timeout=60,
    )


def _stored(viewing: Viewing, data: bytes) -> bool:
    sop = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    with session_scope(viewing.settings.resolved_database_url) as session:
        return session.get(Instance, sop) is not None


@pytest.fixture
def cleanup_verdicts(viewing: Viewing, reviewed: Reviewed) -> Iterator[None]:
    yield
    from sqlmodel import delete

    with session_scope(viewing.settings.resolved_database_url) as session:
        session.exec(delete(ReadingVerdict).where(ReadingVerdict.result_id == reviewed.reading_id))  # type: ignore[call-overload]


def test_a_radiologist_saves_a_corrected_seg_and_the_reading_is_corrected(
    viewing: Viewing, reviewed: Reviewed, cleanup_verdicts: None
) -> None:
    data = corrected_seg(reviewed.sources)
    answer = _save(viewing, _viewer(viewing, "rex", reviewed.study), [data])
    assert answer.status_code == 200, answer.text
    assert _stored(viewing, data)
    sop = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    assert answer.json()["00081199"]["Value"][0]["00081155"]["Value"] == [sop]
    source = reviewed.sources[0]
    voxel_ml = float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
    voxel_ml *= float(source.SliceThickness) / 1000
    with session_scope(viewing.settings.resolved_database_url) as session:
        (verdict,) = session.exec(
            select(ReadingVerdict).where(ReadingVerdict.result_id == reviewed.reading_id)
        ).all()
    assert verdict.verdict == "corrected" and verdict.username == "rex"
    assert verdict.corrected_seg_sop_instance_uid == sop
    with httpx.Client(base_url=viewing.base, timeout=30) as client:
        access = viewing.login(client, "rex")["access_token"]
        readings = client.get(
            f"/api/studies/{reviewed.study}/readings",
            headers={"Authorization": f"Bearer {access}"},
        ).json()["readings"]
    (reading,) = readings
    assert reading["verdict"]["verdict"] == "corrected"
    volumes = reading["verdict"]["corrected_volumes_ml"]
    assert volumes[TRACKING[0]] == pytest.approx(2 * 10 * 12 * voxel_ml, rel=1e-3)
    assert volumes[TRACKING[1]] == pytest.approx(3 * 3 * voxel_ml, rel=1e-3)


def test_what_may_not_be_saved_is_refused_audited_and_not_stored(
    viewing: Viewing, reviewed: Reviewed, cleanup_verdicts: None
) -> None:
    rex = _viewer(viewing, "rex", reviewed.study)
    buffer = io.BytesIO()
    reviewed.sources[0].save_as(buffer, enforce_file_format=True)
    not_a_seg = buffer.getvalue()  # an image of the study: stored already, by the fixture
    other_study = corrected_seg(reviewed.sources, study=viewing.study_b)
    cases = {
        "a CT image, not a SEG": ([not_a_seg], 400),
        "a SEG naming another study": ([other_study], 403),
        "two SEGs at once": (
            [corrected_seg(reviewed.sources), corrected_seg(reviewed.sources)],
            400,
        ),
    }
    for name, (files, status) in cases.items():
        answer = _save(viewing, rex, files)
        assert answer.status_code == status, (name, answer.text)
        assert all(not _stored(viewing, f) for f in files if f != not_a_seg), name
    # A clinician's viewer may read the study but not save into it.
    seg = corrected_seg(reviewed.sources)
    with session_scope(viewing.settings.resolved_database_url) as session:
        from webapp import accounts

        accounts.grant_patient(session, "cara", "NN-TEST-C")
    assert _save(viewing, _viewer(viewing, "cara", reviewed.study), [seg]).status_code == 403
    assert not _stored(viewing, seg)
    # A viewer token without its browser's cookie is no one's.
    token, _key = rex
    assert _save(viewing, (token, "0" * 43), [seg]).status_code == 403
    with session_scope(viewing.settings.resolved_database_url) as session:
        refused = session.exec(
            select(AuditEvent).where(
                AuditEvent.action == "stow",
                AuditEvent.study_instance_uid == reviewed.study,
                AuditEvent.status >= 400,  # type: ignore[operator]
            )
        ).all()
        verdicts = session.exec(
            select(ReadingVerdict).where(ReadingVerdict.result_id == reviewed.reading_id)
        ).all()
    assert len(refused) >= 5 and not verdicts
