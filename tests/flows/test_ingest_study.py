"""The ingest flow against a real Orthanc and MariaDB, under one Prefect test harness."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from sqlmodel import select
from typer.testing import CliRunner

from common.db import Instance, QuarantineItem, session_scope
from common.settings import Settings
from flows.ingest_study import ingest_study
from neuronova.cli import app
from tasks.dicom.htj2k import HTJ2K_LOSSLESS
from tests.support.dicom_factory import dicom_bytes, make_ct, write
from tests.support.orthanc import orthanc_http

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("orthanc", "prefect_harness")]


def by_path(report: dict) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in report["files"]}


def study_artifacts(study_uid: str) -> list[Artifact]:
    """The ingest table artifacts Prefect holds for a study."""
    key = f"ingest-{study_uid.replace('.', '-')}"[:100]
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def orthanc_file(settings: Settings, sop_uid: str) -> bytes:
    with orthanc_http(settings) as http:
        [match] = [
            m for m in http.post("/tools/lookup", content=sop_uid).json() if m["Type"] == "Instance"
        ]
        return http.get(f"/instances/{match['ID']}/file").content


def test_series_is_stored_as_verified_htj2k_and_indexed(orthanc: Settings, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    originals = [make_ct(i, study=study, series=series) for i in range(5)]
    for i, ds in enumerate(originals):
        write(ds, tmp_path / f"{i}.dcm")

    report = ingest_study(str(tmp_path))

    assert report["counts"] == {"stored": 5, "duplicate": 0, "quarantined": 0, "conflict": 0}
    assert {f["transfer_syntax"] for f in report["files"]} == {HTJ2K_LOSSLESS}
    [summary] = [s for s in report["studies"] if s["study_instance_uid"] == study]
    assert summary["series"][0]["instances"] == 5
    assert summary["series"][0]["verification"] == "5/5 verified bit-exact"
    for ds in originals:
        stored = dcmread(io.BytesIO(orthanc_file(orthanc, ds.SOPInstanceUID)))
        assert stored.file_meta.TransferSyntaxUID == HTJ2K_LOSSLESS
        assert np.array_equal(stored.pixel_array, ds.pixel_array)
        assert stored.PatientID == ds.PatientID
    with session_scope(orthanc.resolved_database_url) as session:
        rows = session.exec(select(Instance).where(Instance.study_instance_uid == study)).all()
    assert len(rows) == 5
    [artifact] = study_artifacts(study)
    [row] = json.loads(artifact.data)
    assert row["instances"] == 5 and row["verification"] == "5/5 verified bit-exact"
    assert row["bytes_before"] > row["bytes_after"] > 0
    assert all(r.lossless and r.transfer_syntax == HTJ2K_LOSSLESS for r in rows)
    assert all(r.bytes_stored < r.bytes_in for r in rows)


def test_reingest_is_a_noop_and_reports_duplicates(orthanc: Settings, tmp_path: Path) -> None:
    path = write(make_ct(), tmp_path / "a.dcm")
    first = ingest_study(str(path))
    stored_before = orthanc_file(orthanc, first["files"][0]["sop_instance_uid"])

    second = ingest_study(str(path))

    assert first["counts"]["stored"] == 1
    assert second["counts"] == {"stored": 0, "duplicate": 1, "quarantined": 0, "conflict": 0}
    assert orthanc_file(orthanc, second["files"][0]["sop_instance_uid"]) == stored_before


def test_same_uid_with_different_pixels_is_a_conflict(orthanc: Settings, tmp_path: Path) -> None:
    original = make_ct()
    ingest_study(str(write(original, tmp_path / "first.dcm")))
    stored_before = orthanc_file(orthanc, original.SOPInstanceUID)
    altered = make_ct(
        3,
        sop=original.SOPInstanceUID,
        study=original.StudyInstanceUID,
        series=original.SeriesInstanceUID,
    )

    report = ingest_study(str(write(altered, tmp_path / "second.dcm")))

    [outcome] = report["files"]
    assert outcome["status"] == "conflict"
    assert "different content" in outcome["reason"]
    assert orthanc_file(orthanc, original.SOPInstanceUID) == stored_before
    kept = _quarantine_rows(orthanc, original.SOPInstanceUID)
    assert [r.kind for r in kept] == ["conflict"]
    assert Path(kept[0].kept_path).read_bytes() == (tmp_path / "second.dcm").read_bytes()


def test_conflict_is_found_even_when_only_orthanc_knows_the_uid(
    orthanc: Settings, tmp_path: Path
) -> None:
    original = make_ct()
    orthanc_http(orthanc).post("/instances", content=dicom_bytes(original)).raise_for_status()
    altered = make_ct(
        4,
        sop=original.SOPInstanceUID,
        study=original.StudyInstanceUID,
        series=original.SeriesInstanceUID,
    )

    report = ingest_study(str(write(altered, tmp_path / "x.dcm")))

    assert report["files"][0]["status"] == "conflict"
    assert orthanc_file(orthanc, original.SOPInstanceUID) == dicom_bytes(original)


def _quarantine_rows(settings: Settings, sop_uid: str) -> list[QuarantineItem]:
    with session_scope(settings.resolved_database_url) as session:
        return list(
            session.exec(
                select(QuarantineItem).where(QuarantineItem.sop_instance_uid == sop_uid)
            ).all()
        )


def _without(keyword: str) -> Callable[[], bytes]:
    def build() -> bytes:
        ds = make_ct()
        delattr(ds, keyword)
        return dicom_bytes(ds)

    return build


def _truncated(keep: float) -> Callable[[], bytes]:
    def build() -> bytes:
        data = dicom_bytes(make_ct())
        return data[: int(len(data) * keep)]

    return build


def _garbage_pixels() -> bytes:
    ds = make_ct()
    ds.PixelData = ds.PixelData[:100]
    return dicom_bytes(ds)


BAD_INPUTS: list[tuple[str, Callable[[], bytes], str]] = [
    ("zero-bytes", lambda: b"", "empty file"),
    ("not-dicom", lambda: b"%PDF-1.4 definitely not an image\n" * 40, "not a DICOM file"),
    ("truncated-header", _truncated(0.02), "truncated"),
    ("truncated-pixels", _truncated(0.6), "truncated"),
    ("no-patient-id", _without("PatientID"), "PatientID"),
    ("no-study-uid", _without("StudyInstanceUID"), "StudyInstanceUID"),
    ("no-sop-uid", _without("SOPInstanceUID"), "SOPInstanceUID"),
    ("no-series-uid", _without("SeriesInstanceUID"), "SeriesInstanceUID"),
    ("short-pixel-data", _garbage_pixels, ""),
]


@pytest.mark.parametrize(
    ("name", "build", "reason_part"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_quarantined_with_reason_and_the_batch_goes_on(
    orthanc: Settings, tmp_path: Path, name: str, build: Callable[[], bytes], reason_part: str
) -> None:
    bad = tmp_path / f"{name}.dcm"
    bad.write_bytes(build())
    good = write(make_ct(), tmp_path / "good.dcm")

    report = ingest_study(str(tmp_path))

    outcomes = by_path(report)
    assert outcomes["good.dcm"]["status"] == "stored"
    assert outcomes[bad.name]["status"] == "quarantined"
    assert reason_part in outcomes[bad.name]["reason"]
    assert outcomes[bad.name]["reason"]
    assert bad.exists() and good.exists()  # inputs are never deleted by default
    kept = list(orthanc.quarantine_dir.rglob(f"*-{bad.name}"))
    assert kept and kept[0].read_bytes() == bad.read_bytes()
    reason_file = kept[0].with_name(kept[0].name + ".reason.json")
    assert json.loads(reason_file.read_text())["reason"] == outcomes[bad.name]["reason"]


def test_zip_with_folders_is_ingested(orthanc: Settings, tmp_path: Path) -> None:
    archive = tmp_path / "study.zip"
    study = generate_uid()
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"DICOM/S1/IM{i}", dicom_bytes(make_ct(i, study=study)))
        zf.writestr("README.txt", "not an image")

    report = ingest_study(str(archive))

    assert report["counts"]["stored"] == 3
    assert report["counts"]["quarantined"] == 1
    assert any(f["path"].endswith("study.zip!DICOM/S1/IM0") for f in report["files"])


def test_lossy_input_is_stored_as_is_and_never_relabelled(
    orthanc: Settings, tmp_path: Path
) -> None:
    ds = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG baseline: lossy
    # Identifiers of its own (pydicom's samples share theirs); the lossy pixel data untouched.
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = write(ds, tmp_path / "lossy.dcm")
    original_ts = dcmread(path).file_meta.TransferSyntaxUID

    report = ingest_study(str(path))

    [outcome] = report["files"]
    assert outcome["status"] in ("stored", "duplicate")
    assert outcome["transfer_syntax"] == original_ts
    stored = dcmread(io.BytesIO(orthanc_file(orthanc, outcome["sop_instance_uid"])))
    assert stored.file_meta.TransferSyntaxUID == original_ts
    with session_scope(orthanc.resolved_database_url) as session:
        row = session.get(Instance, outcome["sop_instance_uid"])
    assert row is not None and row.lossless is False


def test_orthanc_down_fails_the_run_safely_and_a_rerun_converges(
    orthanc: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [write(make_ct(i), tmp_path / f"{i}.dcm") for i in range(3)]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    monkeypatch.setenv("NEURONOVA_ORTHANC_URL", "http://127.0.0.1:9")  # nothing listens there

    with pytest.raises(Exception, match="did not answer"):
        ingest_study(str(tmp_path), remove_originals=True)

    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths} == before
    monkeypatch.setenv("NEURONOVA_ORTHANC_URL", orthanc.orthanc_url)
    report = ingest_study(str(tmp_path))
    assert report["counts"]["stored"] == 3


def test_remove_originals_deletes_only_verified_inputs(orthanc: Settings, tmp_path: Path) -> None:
    good = write(make_ct(), tmp_path / "good.dcm")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"junk")

    report = ingest_study(str(tmp_path), remove_originals=True)

    assert by_path(report)["good.dcm"]["status"] == "stored"
    assert not good.exists()
    assert bad.exists()


def test_cli_json_report(orthanc: Settings, tmp_path: Path) -> None:
    write(make_ct(), tmp_path / "one.dcm")
    (tmp_path / "two.dcm").write_bytes(b"")

    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--json"])

    assert result.exit_code == 3, result.output  # partial: one quarantined
    report = json.loads(result.stdout)
    assert {f["status"] for f in report["files"]} == {"stored", "quarantined"}
    for item in report["files"]:
        assert set(item) == {"path", "status", "sop_instance_uid", "transfer_syntax", "reason"}


def test_same_instance_in_another_encoding_is_a_duplicate(
    orthanc: Settings, tmp_path: Path
) -> None:
    """Other bytes, same content (implicit VR this time): compared by content, not bytes."""
    ds = make_ct()
    ingest_study(str(write(ds, tmp_path / "explicit.dcm")))
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)

    report = ingest_study(str(implicit))

    assert report["files"][0]["status"] == "duplicate", report["files"][0]["reason"]


def test_one_uid_twice_in_a_batch_is_a_duplicate_or_a_conflict(
    orthanc: Settings, tmp_path: Path
) -> None:
    first = make_ct()
    other_patient = make_ct(5, sop=first.SOPInstanceUID)  # another study, other pixels
    other_patient.PatientID = "SOMEONE-ELSE"
    write(first, tmp_path / "a.dcm")
    write(first, tmp_path / "b.dcm")
    write(other_patient, tmp_path / "c.dcm")

    outcomes = by_path(ingest_study(str(tmp_path)))

    assert [outcomes[n]["status"] for n in ("a.dcm", "b.dcm", "c.dcm")] == [
        "stored",
        "duplicate",
        "conflict",
    ]
    assert orthanc_file(orthanc, first.SOPInstanceUID)  # one instance under that UID


def test_a_batch_decides_repeats_and_identity_across_its_chunks(
    orthanc: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs are prepared and screened in chunks (8 at a time) while earlier ones upload: a
    repeat or an identity conflict far from the first of its kind is still caught."""
    monkeypatch.setenv("NEURONOVA_INGEST_BATCH_SIZE", "64")  # one batch, three chunks
    study, series = generate_uid(), generate_uid()
    series_files = [make_ct(i, study=study, series=series) for i in range(20)]
    for i, ds in enumerate(series_files):
        write(ds, tmp_path / f"{i:02d}.dcm")
    write(series_files[0], tmp_path / "90-repeat.dcm")
    impostor = make_ct(30, study=study)
    impostor.PatientID = "SOMEONE-ELSE"
    write(impostor, tmp_path / "91-impostor.dcm")

    outcomes = by_path(ingest_study(str(tmp_path)))

    assert all(outcomes[f"{i:02d}.dcm"]["status"] == "stored" for i in range(20))
    assert outcomes["90-repeat.dcm"]["status"] == "duplicate"
    assert outcomes["91-impostor.dcm"]["status"] == "conflict"
    assert "patient mismatch" in outcomes["91-impostor.dcm"]["reason"]


def test_another_patients_file_in_a_known_study_is_a_conflict_held_in_quarantine(
    orthanc: Settings, tmp_path: Path
) -> None:
    first = make_ct(0)
    ingest_study(str(write(first, tmp_path / "first" / "a.dcm")))
    # X's study named by a file of patient Y; and a series of X's study named in another study.
    impostor = make_ct(1, study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
    impostor.PatientID = "SOMEONE-ELSE"
    moved_series = make_ct(2, series=first.SeriesInstanceUID)
    moved_series.PatientID = first.PatientID
    write(impostor, tmp_path / "later" / "impostor.dcm")
    write(moved_series, tmp_path / "later" / "moved.dcm")

    outcomes = by_path(ingest_study(str(tmp_path / "later")))

    assert outcomes["impostor.dcm"]["status"] == "conflict"
    assert "patient mismatch" in outcomes["impostor.dcm"]["reason"]
    assert outcomes["moved.dcm"]["status"] == "conflict"
    assert "series mismatch" in outcomes["moved.dcm"]["reason"]
    for ds in (impostor, moved_series):  # nothing stored beside the first patient's study
        lookup = orthanc_http(orthanc).post("/tools/lookup", content=ds.SOPInstanceUID)
        assert lookup.json() == []
    with session_scope(orthanc.resolved_database_url) as session:
        held = session.exec(
            select(QuarantineItem).where(QuarantineItem.sop_instance_uid == impostor.SOPInstanceUID)
        ).one()
        assert held.kind == "conflict" and Path(held.kept_path).read_bytes()
        assert session.get(Instance, impostor.SOPInstanceUID) is None

    listed = CliRunner().invoke(app, ["conflicts", "--json"])
    assert listed.exit_code == 0, listed.output
    reasons = {row["sop_instance_uid"]: row["reason"] for row in json.loads(listed.stdout)}
    assert "patient mismatch" in reasons[impostor.SOPInstanceUID]
    assert "series mismatch" in reasons[moved_series.SOPInstanceUID]


def test_inputs_over_a_limit_are_quarantined_with_the_limit_and_the_rest_goes_on(
    orthanc: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURONOVA_INGEST_MAX_FILE_BYTES", str(1024**2))
    inbox = tmp_path / "inbox"
    good = write(make_ct(), inbox / "good.dcm")
    (inbox / "huge.bin").write_bytes(os.urandom(3 * 1024**2))
    with zipfile.ZipFile(inbox / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", bytes(64 * 1024**2))

    outcomes = by_path(ingest_study(str(inbox)))

    assert outcomes["good.dcm"]["status"] == "stored"
    assert "NEURONOVA_INGEST_MAX_FILE_BYTES" in outcomes["huge.bin"]["reason"]
    assert "NEURONOVA_INGEST_MAX_ZIP_RATIO" in outcomes["bomb.zip!zeros.dcm"]["reason"]
    with session_scope(orthanc.resolved_database_url) as session:
        kept = {
            Path(row.source_path).name: row
            for row in session.exec(select(QuarantineItem))
            if str(inbox) in row.source_path
        }
    assert Path(kept["huge.bin"].kept_path).stat().st_size == 1024**2  # its head only
    assert good.exists()  # nothing removed without remove_originals
