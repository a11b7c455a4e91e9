"""STOW-RS through the real gateway: nginx → the webapp → the verified ingest → Orthanc and the
index. An uploader's good study is stored as verified HTJ2K, per instance; a broken file is
named in the FailedSOPSequence and kept in quarantine; a conflict gets 0x0111; anyone else is
refused; an oversized body gets 413; every upload is audited; reads stay the gate's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlmodel import col, select

from common.db import AuditEvent, Instance, QuarantineItem, StudyArrival, session_scope
from common.settings import Settings
from tasks.dicom.htj2k import HTJ2K_LOSSLESS_SYNTAXES
from tests.support.dicom_factory import dicom_bytes, make_ct
from tests.webapp.test_multipart import BOUNDARY, related_body
from webapp import accounts
from webapp.stow import CANNOT_UNDERSTAND, DUPLICATE_CONFLICT

pytestmark = pytest.mark.integration

PASSWORD = "stow test password 1"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'


@pytest.fixture(scope="module")
def users(gateway: Settings) -> dict[str, str]:
    """An uploader and a clinician, signed in: name → access token."""
    with session_scope(gateway.resolved_database_url) as session:
        for name, role in (("ulla", "uploader"), ("carl", "clinician")):
            if accounts.find_user(session, name) is None:
                accounts.add_user(session, name, role, PASSWORD)
    tokens = {}
    for name in ("ulla", "carl"):
        answer = httpx.post(
            f"{gateway.gateway_url}/api/auth/login",
            json={"username": name, "password": PASSWORD},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        tokens[name] = answer.json()["access_token"]
    return tokens


def _stow(gateway: Settings, token: str | None, body: bytes) -> httpx.Response:
    headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(
        f"{gateway.gateway_url}/dicom-web/studies", content=body, headers=headers, timeout=120
    )


def _items(answer: httpx.Response, tag: str) -> list[dict[str, Any]]:
    sequence = answer.json().get(tag, {"Value": []})
    assert sequence.get("vr", "SQ") == "SQ"
    return list(sequence["Value"])


def _uids(items: list[dict[str, Any]]) -> list[str | None]:
    return [(i["00081155"].get("Value") or [None])[0] for i in items]


def test_an_uploaders_study_is_stored_verified_per_instance(
    gateway: Settings, users: dict[str, str]
) -> None:
    study, series = generate_uid(), generate_uid()
    slices = [make_ct(i, study=study, series=series) for i in range(3)]
    answer = _stow(gateway, users["ulla"], related_body([dicom_bytes(ds) for ds in slices]))

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    referenced = _items(answer, "00081199")
    assert _uids(referenced) == [str(ds.SOPInstanceUID) for ds in slices]
    assert "00081198" not in answer.json()  # nothing failed
    for item, ds in zip(referenced, slices, strict=True):
        assert item["00081150"]["Value"] == [str(ds.SOPClassUID)]
        url = f"/dicom-web/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"
        assert item["00081190"]["Value"] == [gateway.gateway_url.rstrip("/") + url]
    with session_scope(gateway.resolved_database_url) as session:
        rows = session.exec(select(Instance).where(Instance.study_instance_uid == study)).all()
        arrivals = session.exec(
            select(StudyArrival).where(StudyArrival.study_instance_uid == study)
        ).all()
    assert len(rows) == 3 and all(r.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for r in rows)
    # Handed on like a C-STORE: an arrival for the watcher (sync, AI), with an upload's number.
    (arrival,) = arrivals
    assert arrival.change_seq < 0 and arrival.state == "pending"

    again = _stow(gateway, users["ulla"], related_body([dicom_bytes(ds) for ds in slices]))
    assert again.status_code == 200 and len(_items(again, "00081199")) == 3  # nothing changes


def test_a_broken_file_is_named_kept_in_quarantine_and_the_rest_stored(
    gateway: Settings, users: dict[str, str]
) -> None:
    good = make_ct()
    broken = dicom_bytes(make_ct())[:400]  # a header cut off: cannot be used
    answer = _stow(gateway, users["ulla"], related_body([dicom_bytes(good), broken]))

    assert answer.status_code == 202, answer.text
    assert _uids(_items(answer, "00081199")) == [str(good.SOPInstanceUID)]
    (failed,) = _items(answer, "00081198")
    assert failed["00081197"] == {"vr": "US", "Value": [CANNOT_UNDERSTAND]}
    with session_scope(gateway.resolved_database_url) as session:
        kept = session.exec(
            select(QuarantineItem).order_by(col(QuarantineItem.id).desc()).limit(5)
        ).all()
    assert any(k.source_path.endswith("part-00002") and k.reason for k in kept), kept

    nothing = _stow(gateway, users["ulla"], related_body([b"not DICOM at all"]))
    assert nothing.status_code == 409
    (failed,) = _items(nothing, "00081198")
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]


def test_a_conflict_with_the_archive_gets_0x0111(gateway: Settings, users: dict[str, str]) -> None:
    first = make_ct(0)
    assert _stow(gateway, users["ulla"], related_body([dicom_bytes(first)])).status_code == 200
    other = make_ct(5, sop=str(first.SOPInstanceUID))  # the same UID, other pixels
    answer = _stow(gateway, users["ulla"], related_body([dicom_bytes(other)]))
    assert answer.status_code == 409, answer.text
    (failed,) = _items(answer, "00081198")
    assert failed["00081197"]["Value"] == [DUPLICATE_CONFLICT]
    assert _uids([failed]) == [str(first.SOPInstanceUID)]


def test_only_uploaders_and_admins_may_upload(gateway: Settings, users: dict[str, str]) -> None:
    from webapp.tokens import derive_key, issue_viewer_link

    body = related_body([dicom_bytes(make_ct())])
    assert _stow(gateway, None, body).status_code == 401
    assert _stow(gateway, users["carl"], body).status_code == 403
    link, _ = issue_viewer_link(
        derive_key(gateway.jwt_secret_bytes(), "viewer"),
        username="ulla",
        study_instance_uid=generate_uid(),
        sid="x" * 32,
        ttl_s=60,
    )
    assert _stow(gateway, link, body).status_code == 401  # a viewer's token is no upload right
    assert _stow(gateway, "not-a-token", body).status_code == 401
    # Reads of the same path are still the gate's: no viewer token, no answer.
    assert httpx.get(f"{gateway.gateway_url}/dicom-web/studies", timeout=10).status_code == 401
    with session_scope(gateway.resolved_database_url) as session:
        refused = session.exec(
            select(AuditEvent).where(AuditEvent.action == "stow", AuditEvent.status == 403)
        ).all()
    assert any(r.username == "carl" for r in refused)


def test_a_body_over_the_limit_gets_413_and_stores_nothing(
    gateway: Settings, users: dict[str, str]
) -> None:
    big = make_ct(size=64)
    data = dicom_bytes(big)
    count = gateway.stow_max_bytes // len(data) + 2
    body = related_body([data] * count)
    assert len(body) > gateway.stow_max_bytes
    answer = _stow(gateway, users["ulla"], body)
    assert answer.status_code == 413, answer.text
    assert "NEURONOVA_STOW_MAX_BYTES" in answer.text
    with session_scope(gateway.resolved_database_url) as session:
        assert session.get(Instance, str(big.SOPInstanceUID)) is None
        audited = session.exec(
            select(AuditEvent).where(AuditEvent.action == "stow", AuditEvent.status == 413)
        ).all()
    assert audited


def test_an_upload_of_several_batches_is_stored_whole(
    gateway: Settings, users: dict[str, str]
) -> None:
    study, series = generate_uid(), generate_uid()
    count = gateway.ingest_batch_size + 4  # two batches, prepared in the webapp's own process
    slices = [make_ct(i, size=32, study=study, series=series) for i in range(count)]
    answer = _stow(gateway, users["ulla"], related_body([dicom_bytes(ds) for ds in slices]))
    assert answer.status_code == 200, answer.text
    assert _uids(_items(answer, "00081199")) == [str(ds.SOPInstanceUID) for ds in slices]
