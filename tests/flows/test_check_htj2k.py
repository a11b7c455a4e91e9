"""C-STORE into a real Orthanc, then the HTJ2K check brings it to verified HTJ2K and indexes it."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlmodel import select

from common.db import Instance, QuarantineItem, session_scope
from common.errors import PermanentUpstreamError
from common.settings import Settings
from flows.check_htj2k import check_htj2k
from neuronova.demo import send_by_cstore
from tasks.archive.orthanc import OrthancClient, orthanc_study_id
from tasks.archive.replace import recover_backups, replace_in_orthanc
from tasks.dicom.htj2k import HTJ2K_LOSSLESS
from tests.support.dicom_factory import dicom_bytes, make_ct, write
from tests.support.orthanc import orthanc_http

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("orthanc", "prefect_harness")]


def storescu(settings: Settings, files: list[Path]) -> None:
    """Push files over DICOM the way a modality would (dcmtk, as the allowed AET STORESCU)."""
    send_by_cstore(settings, files)


def transfer_syntax(settings: Settings, sop_uid: str) -> str:
    with OrthancClient.from_settings(settings) as client:
        orthanc_id = client.lookup(sop_uid)
        assert orthanc_id is not None
        return client.instance_transfer_syntax(orthanc_id)


def test_cstore_study_becomes_htj2k_and_indexed(orthanc: Settings, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    originals = [make_ct(i, study=study, series=series) for i in range(4)]
    files = [write(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(originals)]
    storescu(orthanc, files)
    assert transfer_syntax(orthanc, originals[0].SOPInstanceUID) == ExplicitVRLittleEndian

    report = check_htj2k(study_instance_uid=study)

    assert report["counts"] == {"replaced": 4}
    with OrthancClient.from_settings(orthanc) as client:
        for ds in originals:
            orthanc_id = client.lookup(ds.SOPInstanceUID)
            assert orthanc_id is not None
            stored = dcmread(io.BytesIO(client.get_instance_file(orthanc_id)))
            assert stored.file_meta.TransferSyntaxUID == HTJ2K_LOSSLESS
            assert np.array_equal(stored.pixel_array, ds.pixel_array)
    with session_scope(orthanc.resolved_database_url) as session:
        rows = [session.get(Instance, ds.SOPInstanceUID) for ds in originals]
    assert all(r is not None and r.source == "orthanc" and r.lossless for r in rows)
    assert not any(orthanc.backup_dir.glob("*.dcm"))

    again = check_htj2k(study_instance_uid=study)
    assert again["counts"] == {"ok": 4}


def test_unknown_study_fails_clearly(orthanc: Settings) -> None:
    with pytest.raises(PermanentUpstreamError, match="not in Orthanc"):
        check_htj2k(study_instance_uid=generate_uid())


def test_failed_replacement_restores_the_original(orthanc: Settings) -> None:
    original = dicom_bytes(make_ct())
    with OrthancClient.from_settings(orthanc) as client:
        stored = client.store_instance(original)
        with pytest.raises(PermanentUpstreamError):
            replace_in_orthanc(
                client,
                stored.orthanc_id,
                original=original,
                replacement=b"not dicom",
                backup_dir=orthanc.backup_dir,
            )
        assert client.get_instance_file(stored.orthanc_id) == original
    assert not any(orthanc.backup_dir.glob("*.dcm"))


def test_backup_left_by_a_crash_is_restored(orthanc: Settings) -> None:
    ds = make_ct()
    original = dicom_bytes(ds)
    with OrthancClient.from_settings(orthanc) as client:
        stored = client.store_instance(original)
        client.delete_instance(stored.orthanc_id)  # the crash: deleted, replacement never came
        orthanc.backup_dir.mkdir(parents=True, exist_ok=True)
        backup = orthanc.backup_dir / f"{stored.orthanc_id}.dcm"
        backup.write_bytes(original)
        old = time.time() - 3600
        os.utime(backup, (old, old))

        assert recover_backups(client, orthanc.backup_dir) == 1
        assert client.get_instance_file(stored.orthanc_id) == original
    assert not backup.exists()


def test_the_backup_of_a_study_whose_run_died_is_restored_at_once(orthanc: Settings) -> None:
    """A re-run of a crashed arrival names its study: that study's fresh backups go back now;
    another study's fresh backup may belong to a swap still running, and waits its grace."""
    crashed, running = make_ct(), make_ct()
    backups = {}
    with OrthancClient.from_settings(orthanc) as client:
        for ds in (crashed, running):
            stored = client.store_instance(dicom_bytes(ds))
            client.delete_instance(stored.orthanc_id)
            orthanc.backup_dir.mkdir(parents=True, exist_ok=True)
            backups[stored.study_id] = orthanc.backup_dir / f"{stored.orthanc_id}.x.dcm"
            backups[stored.study_id].write_bytes(dicom_bytes(ds))
        crashed_study = orthanc_study_id(str(crashed.PatientID), str(crashed.StudyInstanceUID))
        assert crashed_study in backups  # Orthanc's own ID, computed without asking Orthanc

        assert recover_backups(client, orthanc.backup_dir, interrupted_study=crashed_study) == 1
        assert client.lookup(str(crashed.SOPInstanceUID)) is not None
        assert client.lookup(str(running.SOPInstanceUID)) is None
        assert not backups[crashed_study].exists()
        (kept,) = [path for study, path in backups.items() if study != crashed_study]
        assert kept.exists()
        kept.unlink()  # (the "running" swap of this test never finishes)


def test_archive_wide_check_reports_every_study(orthanc: Settings, tmp_path: Path) -> None:
    ds = make_ct()
    orthanc_http(orthanc).post("/instances", content=dicom_bytes(ds)).raise_for_status()

    report = check_htj2k()

    by_sop = {i["sop_instance_uid"]: i for i in report["instances"]}
    assert by_sop[ds.SOPInstanceUID]["status"] == "replaced"
    assert by_sop[ds.SOPInstanceUID]["transfer_syntax_after"] == HTJ2K_LOSSLESS
    assert "failed" not in report["counts"]


def test_lossy_instance_is_indexed_once_then_left_alone(orthanc: Settings) -> None:
    from pydicom.data import get_testdata_file

    lossy = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).read_bytes()
    ds = dcmread(io.BytesIO(lossy))
    ds.SOPInstanceUID = generate_uid()  # its own instance, whatever other tests stored
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()  # a series belongs to one study (tasks/archive/identity)
    orthanc_http(orthanc).post("/instances", content=dicom_bytes(ds)).raise_for_status()

    first = check_htj2k(study_instance_uid=ds.StudyInstanceUID)
    second = check_htj2k(study_instance_uid=ds.StudyInstanceUID)

    assert first["counts"] == {"kept": 1}
    assert "lossy" in first["instances"][0]["reason"].lower()
    assert second["counts"] == {"ok": 1}


def test_same_uid_under_another_patient_is_a_conflict_not_reindexed(
    orthanc: Settings, tmp_path: Path
) -> None:
    from flows.ingest_study import ingest_study

    original = make_ct()
    ingest_study(str(write(original, tmp_path / "a.dcm")))
    impostor = make_ct(2, sop=original.SOPInstanceUID)
    impostor.PatientID = "SOMEONE-ELSE"
    storescu(orthanc, [write(impostor, tmp_path / "b.dcm")])

    report = check_htj2k(study_instance_uid=impostor.StudyInstanceUID)

    assert report["counts"] == {"conflict": 1}
    with session_scope(orthanc.resolved_database_url) as session:
        row = session.get(Instance, original.SOPInstanceUID)
    assert row is not None and row.study_instance_uid == original.StudyInstanceUID


def test_another_patients_file_sent_into_a_known_study_is_held_and_removed(
    orthanc: Settings, tmp_path: Path
) -> None:
    from flows.ingest_study import ingest_study

    original = make_ct()
    ingest_study(str(write(original, tmp_path / "a.dcm")))
    impostor = make_ct(3, study=original.StudyInstanceUID)
    impostor.PatientID = "SOMEONE-ELSE"
    storescu(orthanc, [write(impostor, tmp_path / "b.dcm")])

    report = check_htj2k(study_instance_uid=original.StudyInstanceUID)

    assert report["counts"].get("conflict") == 1, report
    (held,) = [i for i in report["instances"] if i["status"] == "conflict"]
    assert "patient mismatch" in held["reason"]
    lookup = orthanc_http(orthanc).post("/tools/lookup", content=impostor.SOPInstanceUID)
    assert lookup.json() == []  # taken out of Orthanc …
    with session_scope(orthanc.resolved_database_url) as session:
        kept = session.exec(
            select(QuarantineItem).where(QuarantineItem.sop_instance_uid == impostor.SOPInstanceUID)
        ).one()  # … once its bytes were kept
        assert kept.kind == "conflict" and Path(kept.kept_path).stat().st_size > 0
        assert session.get(Instance, impostor.SOPInstanceUID) is None
