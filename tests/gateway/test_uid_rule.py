"""A study whose UIDs have zero-padded components (as real archives hold) is stored by ingest,
listed, given a viewer link and served through the gate: one UID rule everywhere
(`tasks/dicom/uid.py`). Until that rule was shared, the gate refused what ingest had stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronova.sample import ct_slice_dataset, head_phantom
from tests.support.orthanc import orthanc_http
from tests.support.viewing import Viewing

pytestmark = pytest.mark.integration

# Components like `0113654` break PS3.5's "no leading zero" and are common in old archives.
PADDED_ROOT = "1.2.840.0113654.2.70.01"


def _write_padded_study(folder: Path) -> tuple[str, str, str]:
    study, series = f"{PADDED_ROOT}.1", f"{PADDED_ROOT}.1.07"
    sops = []
    for index in range(2):
        sop = f"{PADDED_ROOT}.1.07.00{index + 1}"
        ds = ct_slice_dataset(
            head_phantom(64, 64, 0.1 * index), index, study, series, f"{PADDED_ROOT}.9", sop
        )
        ds.PatientID = "NN-TEST-PADDED"
        ds.PatientName = "Test^Padded"
        ds.save_as(folder / f"P{index}.dcm", enforce_file_format=True)
        sops.append(sop)
    return study, series, sops[0]


def test_a_study_with_zero_padded_uids_is_stored_listed_and_viewable(
    viewing: Viewing, tmp_path: Path
) -> None:
    from flows.ingest_study import ingest_study

    study, series, sop = _write_padded_study(tmp_path)
    report = ingest_study(str(tmp_path))
    assert report["counts"]["stored"] + report["counts"]["duplicate"] == 2, report["files"]

    with viewing.client() as client:
        access = viewing.login(client, "rex")["access_token"]
        listed = client.get("/api/studies", headers={"Authorization": f"Bearer {access}"})
        assert study in [s["study_instance_uid"] for s in listed.json()["studies"]]
        token = viewing.open(client, access, study)
        bearer = {"Authorization": f"Bearer {token}"}
        metadata = client.get(
            f"/dicom-web/studies/{study}/series/{series}/metadata", headers=bearer
        )
        assert metadata.status_code == 200 and len(metadata.json()) == 2
        wado = client.get(
            f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}",
            headers=bearer,
        )
    assert wado.status_code == 200
    orthanc = orthanc_http(viewing.settings)
    orthanc_id = orthanc.post("/tools/lookup", content=sop).json()
    direct = orthanc.get(f"/instances/{orthanc_id[0]['ID']}/file")
    assert wado.content == direct.content
