"""The gate answers any DICOMweb client as PS3.18 says, not only OHIF: `dicomweb-client` (the
Python client highdicom and IDC's tools use) with a radiologist's viewer token, through nginx,
within the token's study. Every retrieve's pixels are compared with the files that were sent."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian
from sqlmodel import col, select

from common.db import AuditEvent, Instance, session_scope
from tasks.dicom.transcode import pixel_sha256
from tests.support.viewing import Viewing

pytestmark = pytest.mark.integration

COOKIE = "neuronova_viewer"  # the browser key's cookie on an http:// gateway
HTJ2K = "1.2.840.10008.1.2.4.201"


@pytest.fixture(scope="module")
def dicomweb(viewing: Viewing) -> Iterator[DICOMwebClient]:
    """dicomweb-client as a radiologist's browser would hold it: the viewer token in the
    Authorization header and the browser key's cookie."""
    with viewing.client() as browser:
        access = viewing.login(browser, "rex")["access_token"]
        token = viewing.open(browser, access)
        key = browser.cookies[COOKIE]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    session.cookies.set(COOKIE, key)
    yield DICOMwebClient(url=f"{viewing.base}/dicom-web", session=session)
    session.close()


@pytest.fixture(scope="module")
def sent(viewing: Viewing) -> dict[str, str]:
    """The SHA-256 of each instance's original pixels, as ingest recorded it once the stored
    HTJ2K had decoded to exactly them (the truth for "pixels exact", whichever test of the
    session sent the file first)."""
    with session_scope(viewing.settings.resolved_database_url) as session:
        rows = session.exec(
            select(Instance.sop_instance_uid, Instance.pixel_sha256).where(
                Instance.study_instance_uid == viewing.study_a
            )
        ).all()
    return {sop: digest for sop, digest in rows if digest}


def _same_pixels(received: pydicom.Dataset, sent: dict[str, str]) -> None:
    digest = pixel_sha256(received.pixel_array)
    assert digest == sent[str(received.SOPInstanceUID)], received.SOPInstanceUID


def test_searches_and_metadata_at_every_level(dicomweb: DICOMwebClient, viewing: Viewing) -> None:
    (study,) = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": viewing.study_a})
    assert study["0020000D"]["Value"] == [viewing.study_a]
    series = dicomweb.search_for_series(study_instance_uid=viewing.study_a)
    assert [s["0020000E"]["Value"][0] for s in series] == [viewing.series_a]
    instances = dicomweb.search_for_instances(study_instance_uid=viewing.study_a)
    assert {i["00080018"]["Value"][0] for i in instances} == set(viewing.instances_a)
    metadata = dicomweb.retrieve_series_metadata(viewing.study_a, viewing.series_a)
    assert {m["00080018"]["Value"][0] for m in metadata} == set(viewing.instances_a)


# dicomweb-client itself asks for `transfer-syntax=*` unless told otherwise: each test names
# what it accepts. A bare media type (no transfer syntax) is PS3.18's explicit VR little endian.
NO_SYNTAX = ("application/dicom",)
EXPLICIT = (("application/dicom", str(ExplicitVRLittleEndian)),)
ANY = (("application/dicom", "*"),)


def test_an_instance_comes_in_explicit_little_endian_unless_asked_as_stored(
    dicomweb: DICOMwebClient, viewing: Viewing, sent: dict[str, str]
) -> None:
    sop = viewing.instances_a[0]
    for media_types in (NO_SYNTAX, EXPLICIT):
        decoded = dicomweb.retrieve_instance(
            viewing.study_a, viewing.series_a, sop, media_types=media_types
        )
        assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, media_types
        _same_pixels(decoded, sent)
    stored = dicomweb.retrieve_instance(viewing.study_a, viewing.series_a, sop, media_types=ANY)
    assert stored.file_meta.TransferSyntaxUID == HTJ2K
    _same_pixels(stored, sent)


def test_a_frame_comes_decoded_by_default_and_as_the_codestream_when_asked(
    dicomweb: DICOMwebClient, viewing: Viewing, sent: dict[str, str]
) -> None:
    sop = viewing.instances_a[1]
    (frame,) = dicomweb.retrieve_instance_frames(
        viewing.study_a,
        viewing.series_a,
        sop,
        frame_numbers=[1],
        media_types=(("application/octet-stream", str(ExplicitVRLittleEndian)),),
    )
    rows, columns = (int(v["Value"][0]) for v in _dimensions(dicomweb, viewing, sop))
    assert hashlib.sha256(frame).hexdigest() == sent[sop] and len(frame) == rows * columns * 2
    (codestream,) = dicomweb.retrieve_instance_frames(
        viewing.study_a,
        viewing.series_a,
        sop,
        frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert codestream[:2] == b"\xff\x4f"  # HTJ2K, as stored


def test_a_whole_series_and_study_are_retrieved_and_audited_once(
    dicomweb: DICOMwebClient, viewing: Viewing, sent: dict[str, str]
) -> None:
    series = dicomweb.retrieve_series(viewing.study_a, viewing.series_a, media_types=NO_SYNTAX)
    assert {str(ds.SOPInstanceUID) for ds in series} == set(viewing.instances_a)
    assert all(ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian for ds in series)
    for ds in series:
        _same_pixels(ds, sent)
    study = dicomweb.retrieve_study(viewing.study_a, media_types=(("application/dicom", "*"),))
    assert {str(ds.SOPInstanceUID) for ds in study} == set(viewing.instances_a)
    assert all(ds.file_meta.TransferSyntaxUID == HTJ2K for ds in study)
    for ds in study:
        _same_pixels(ds, sent)
    # Allowed reads reach the audit table in the webapp's next batch (a fraction of a second).
    deadline = time.monotonic() + 10
    while _retrievals_audited(viewing) != {"retrieve-series", "retrieve-study"}:
        assert time.monotonic() < deadline, _retrievals_audited(viewing)
        time.sleep(0.2)


def _retrievals_audited(viewing: Viewing) -> set[str]:
    with session_scope(viewing.settings.resolved_database_url) as session:
        rows = session.exec(
            select(AuditEvent.action).where(
                col(AuditEvent.action).in_(("retrieve-series", "retrieve-study")),
                AuditEvent.username == "rex",
            )
        ).all()
    return set(rows)


def test_another_studys_series_and_a_syntax_the_gate_cannot_make_are_refused(
    dicomweb: DICOMwebClient, viewing: Viewing
) -> None:
    with pytest.raises(requests.HTTPError) as refused:
        dicomweb.retrieve_series(viewing.study_b, viewing.series_b, media_types=ANY)
    assert refused.value.response.status_code == 403
    with pytest.raises(requests.HTTPError) as not_acceptable:
        dicomweb.retrieve_instance(
            viewing.study_a,
            viewing.series_a,
            viewing.instances_a[0],
            media_types=(("application/dicom", "1.2.840.10008.1.2.4.50"),),
        )
    assert not_acceptable.value.response.status_code == 406
    assert "1.2.840.10008.1.2.1" in not_acceptable.value.response.json()["error"]


def _dimensions(dicomweb: DICOMwebClient, viewing: Viewing, sop: str) -> tuple[Any, Any]:
    metadata = dicomweb.retrieve_instance_metadata(viewing.study_a, viewing.series_a, sop)
    return metadata["00280010"], metadata["00280011"]  # Rows, Columns
