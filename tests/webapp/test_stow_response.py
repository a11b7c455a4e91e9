"""The STOW-RS answer (PS3.18 §10.5.3) built from what ingest did with each part."""

from __future__ import annotations

from tasks.ingest.prepare import FileOutcome, IngestStatus
from webapp.stow import (
    CANNOT_UNDERSTAND,
    DUPLICATE_CONFLICT,
    PROCESSING_FAILURE,
    PartIds,
    stow_response,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _outcome(path: str, status: IngestStatus, sop: str | None) -> FileOutcome:
    return FileOutcome(path, status, sop_instance_uid=sop, study_uid="1.2", series_uid="1.2.3")


def test_each_part_is_referenced_or_failed_with_its_reason() -> None:
    outcomes = [
        _outcome("p1", IngestStatus.STORED, "1.1"),
        _outcome("p2", IngestStatus.DUPLICATE, "1.2"),
        _outcome("p3", IngestStatus.QUARANTINED, None),
        _outcome("p4", IngestStatus.CONFLICT, "1.4"),
    ]
    ids = {f"p{i}": PartIds(CT, f"1.{i}") for i in (1, 2, 4, 5)} | {"p3": PartIds(None, None)}
    body = stow_response(outcomes, ids, "https://pacs.example", unavailable=["p5"])

    referenced = body["00081199"]["Value"]
    assert [r["00081155"]["Value"] for r in referenced] == [["1.1"], ["1.2"]]
    assert referenced[0]["00081150"] == {"vr": "UI", "Value": [CT]}
    assert referenced[0]["00081190"]["Value"] == [
        "https://pacs.example/dicom-web/studies/1.2/series/1.2.3/instances/1.1"
    ]
    failed = body["00081198"]["Value"]
    reasons = {(f["00081155"].get("Value") or [None])[0]: f["00081197"]["Value"] for f in failed}
    assert reasons == {
        "1.5": [PROCESSING_FAILURE],  # the archive failed: send it again
        None: [CANNOT_UNDERSTAND],  # not DICOM: no UID to name, the attribute is empty
        "1.4": [DUPLICATE_CONFLICT],
    }


def test_an_upload_that_all_went_well_has_no_failed_sequence() -> None:
    body = stow_response([_outcome("p1", IngestStatus.STORED, "1.1")], {}, "https://x")
    assert set(body) == {"00081199"}
