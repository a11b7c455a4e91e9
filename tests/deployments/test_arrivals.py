"""The arrival loop with real parts: `storescu` sends a study, and without any command the
stack's arrival watcher hands it to the cpu worker, which brings it to verified HTJ2K, indexes
it, syncs the patient and hands MR to the gpu worker's model; the SEG, the FHIR report and the
alert on a listening clinician's stream follow. Sent twice, a study changes nothing; a late
series is processed alone; the Prefect server down while a study becomes stable, or a worker
killed mid-study, loses nothing and processes the study once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlmodel import col, select

from common.db import ArrivalState, InferenceResult, Instance, StudyArrival, session_scope
from common.settings import Settings
from neuronova.sample_mr import SAMPLE_MR_SEED, write_sample_mr_study
from neuronova.stack.processes import proc_stat, reap
from neuronova.stack.supervisor import LocalStack
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.htj2k import HTJ2K_LOSSLESS_SYNTAXES
from tasks.dicom.parse import parse_dicom
from tasks.inference.alerts import AI_RESULT
from tests.flows.test_check_htj2k import storescu
from tests.support.alerts import Listener
from tests.support.dicom_factory import make_ct, write
from webapp import accounts

pytestmark = pytest.mark.integration

COMPONENTS = ["worker-cpu", "worker-gpu", "arrivals"]
PASSWORD = "arrivals-test-password-1"


@dataclass(frozen=True)
class ArrivalStack:
    stack: LocalStack
    settings: Settings

    def log(self) -> str:
        return "\n".join(
            f"--- {name}\n" + self.stack.log_path(self.stack.by_name[name]).read_text()[-3000:]
            for name in COMPONENTS
        )


@pytest.fixture(scope="module")
def arrival_stack(
    prefect_server: str, orthanc: Settings, patient_sources: Settings
) -> Iterator[ArrivalStack]:
    """The watcher and both workers, as `make demo` runs them (patients synced on arrival);
    `stack up` registers the deployments they need."""
    # The watcher starts at the end of the change log: the studies earlier tests left in this
    # Orthanc are not this module's.
    settings = orthanc.model_copy(
        update={"arrivals_from": "now", "patient_sync_after_ingest": True}
    )
    stack = LocalStack(settings)
    try:
        status = stack.up(COMPONENTS)
        assert status["components"]["arrivals"]["healthy"], status["components"]["arrivals"]
        yield ArrivalStack(stack, settings)
    finally:
        stack.down(COMPONENTS)


def _arrivals(settings: Settings, study_uid: str) -> list[StudyArrival]:
    with OrthancClient.from_settings(settings) as client:
        orthanc_id = client.lookup(study_uid, "Study")
    if orthanc_id is None:
        return []
    with session_scope(settings.resolved_database_url) as session:
        return list(
            session.exec(
                select(StudyArrival)
                .where(StudyArrival.orthanc_study_id == orthanc_id)
                .order_by(col(StudyArrival.change_seq))
            )
        )


def _wait_until_done(
    arrivals: ArrivalStack, study_uid: str, count: int, timeout_s: float = 300
) -> list[StudyArrival]:
    """Until `count` arrivals of the study are done (the watcher and the workers at work)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _arrivals(arrivals.settings, study_uid)
        if len([r for r in rows if r.state == ArrivalState.DONE]) >= count:
            return rows
        assert not [r for r in rows if r.state == ArrivalState.FAILED], rows
        assert time.monotonic() < deadline, f"not processed in time: {rows}\n{arrivals.log()}"
        time.sleep(0.5)


def _indexed(settings: Settings, sops: list[str]) -> list[Instance]:
    with session_scope(settings.resolved_database_url) as session:
        return list(session.exec(select(Instance).where(col(Instance.sop_instance_uid).in_(sops))))


def _ct_study(folder: Path, count: int, size: int = 64) -> tuple[str, list[Path], list[str]]:
    study, series = generate_uid(), generate_uid()
    slices = [make_ct(i, size=size, study=study, series=series) for i in range(count)]
    files = [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(slices)]
    return study, files, [str(ds.SOPInstanceUID) for ds in slices]


def test_a_study_sent_by_cstore_is_processed_without_any_command(
    arrival_stack: ArrivalStack, tmp_path: Path
) -> None:
    settings = arrival_stack.settings
    study, files, sops = _ct_study(tmp_path / "first", 3)
    started = time.monotonic()
    storescu(settings, files)
    rows = _wait_until_done(arrival_stack, study, 1)
    print(f"\nsent → HTJ2K verified and indexed in {time.monotonic() - started:.1f} s")
    indexed = _indexed(settings, sops)
    assert len(indexed) == 3
    assert all(i.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for i in indexed)
    assert rows[0].study_instance_uid == study and "replaced 3" in (rows[0].detail or "")

    # The same files again: Orthanc keeps the first copies; after the check's own swaps
    # became stable, the study holds nothing new.
    storescu(settings, files)
    late_series = generate_uid()
    late = [make_ct(i, study=study, series=late_series) for i in range(3, 5)]
    storescu(settings, [write(ds, tmp_path / f"b{i}.dcm") for i, ds in enumerate(late)])
    rows = _wait_until_done(arrival_stack, study, len(rows) + 1)
    details = [r.detail or "" for r in rows if r.state == ArrivalState.DONE]
    assert any("replaced 2" in d and "1 new series" in d for d in details), details
    assert sum("replaced 3" in d for d in details) == 1, details  # the first series once


def _login(base: str, username: str) -> str:
    answer = httpx.post(
        f"{base}/api/auth/login", json={"username": username, "password": PASSWORD}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def _readings(settings: Settings, study_uid: str) -> list[InferenceResult]:
    with session_scope(settings.resolved_database_url) as session:
        return list(
            session.exec(
                select(InferenceResult).where(InferenceResult.study_instance_uid == study_uid)
            )
        )


def test_the_sample_mr_sent_by_cstore_is_read_reported_and_alerted(
    arrival_stack: ArrivalStack, gateway: Settings, tmp_path: Path
) -> None:
    """The whole loop, as a hospital sees it: a modality sends; a clinician with the patient on
    her care list hears of the finding on her open alert stream; nobody ran a command."""
    settings = arrival_stack.settings
    files, _mask = write_sample_mr_study(tmp_path / "mr", seed=SAMPLE_MR_SEED + 3)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, mrn = str(first.StudyInstanceUID), str(first.PatientID)
    with session_scope(settings.resolved_database_url) as session:
        if accounts.find_user(session, "lena") is None:
            accounts.add_user(session, "lena", "clinician", PASSWORD)
    with session_scope(settings.resolved_database_url) as session:
        accounts.grant_patient(session, "lena", mrn)
    listener = Listener(gateway.gateway_url, _login(gateway.gateway_url, "lena"))
    try:
        assert listener.status == 200
        sent = time.monotonic()
        storescu(settings, files)
        alert = listener.wait_for(AI_RESULT, timeout_s=300)
        assert alert is not None, arrival_stack.log()
        print(
            f"\nsample MR sent → alert on the clinician's stream in {time.monotonic() - sent:.1f} s"
        )
    finally:
        listener.close()
    assert alert["study_instance_uid"] == study_uid and alert["lesion_count"] >= 1
    # The run records alerted_at just after the alert went out: the stream may be faster.
    deadline = time.monotonic() + 30
    while True:
        (reading,) = _readings(settings, study_uid)
        if reading.alerted_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reading.status == "completed" and reading.fhir_report_id and reading.alerted_at
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    indexed = _indexed(settings, sops)
    assert len(indexed) == len(files)
    assert all(i.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for i in indexed)
    with OrthancClient.from_settings(settings) as client:
        assert client.lookup(reading.seg_sop_instance_uid) is not None  # the SEG is in Orthanc
    fhir = httpx.get(f"{settings.fhir_url}/DiagnosticReport/{reading.fhir_report_id}", timeout=10)
    assert fhir.status_code == 200 and study_uid in fhir.json()["conclusion"]

    # Sent again: processed (stable again), but one SEG, one report, one reading.
    done = len([r for r in _arrivals(settings, study_uid) if r.state == ArrivalState.DONE])
    storescu(settings, files)
    _wait_until_done(arrival_stack, study_uid, done + 1)
    (again,) = _readings(settings, study_uid)
    assert (again.id, again.seg_sop_instance_uid, again.fhir_report_id) == (
        reading.id,
        reading.seg_sop_instance_uid,
        reading.fhir_report_id,
    )
    with OrthancClient.from_settings(settings) as client:
        seg_series = client.lookup(reading.seg_series_uid, "Series")
        assert seg_series is not None and len(client.series_instances(seg_series)) == 1


def test_a_study_stable_while_prefect_is_down_is_processed_once_it_is_back(
    arrival_stack: ArrivalStack, tmp_path: Path
) -> None:
    stack, settings = arrival_stack.stack, arrival_stack.settings
    study, files, sops = _ct_study(tmp_path / "study", 3)
    stack.down(["prefect"])
    try:
        storescu(settings, files)
        deadline = time.monotonic() + 60
        while not [r for r in _arrivals(settings, study) if r.attempts >= 1]:
            assert time.monotonic() < deadline, (
                "the arrival was not recorded\n" + arrival_stack.log()
            )
            time.sleep(0.5)
        (waiting,) = _arrivals(settings, study)
        assert waiting.state == ArrivalState.PENDING  # kept, tried again with back-off
        assert "could not create its run" in (waiting.detail or "")
    finally:
        stack.up(["prefect"])
    rows = _wait_until_done(arrival_stack, study, 1)
    assert sum("replaced 3" in (r.detail or "") for r in rows) == 1, rows
    indexed = _indexed(settings, sops)
    assert len(indexed) == 3
    assert all(i.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for i in indexed)


def _descendants(pid: int) -> list[int]:
    """Every live process forked from `pid`, however deep (a flow run may lead its own session)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _swaps_since(client: OrthancClient, seq: int) -> int:
    """Instances the check has swapped for their HTJ2K copy since change `seq`, the last of
    the study's arrival (each swap stores the copy anew; deletions are not in the log)."""
    swaps = 0
    while True:
        page = client.changes(seq)
        swaps += sum(c["ChangeType"] == "NewInstance" for c in page["Changes"])
        seq = int(page["Last"])
        if page["Done"] or not page["Changes"]:
            return swaps


def _pixels(data: bytes) -> Any:
    return parse_dicom(data).pixel_array


def test_a_worker_killed_mid_study_loses_nothing_and_the_rerun_completes(
    arrival_stack: ArrivalStack, tmp_path: Path
) -> None:
    """SIGKILL to the cpu worker and the flow run it started, part-way through the check: every
    instance is still in Orthanc or in the backup folder; the run is marked Crashed once its
    heartbeats stop (deployments/crashed_runs.py), the watcher submits the arrival again, the
    worker restarted takes it, and the study ends verified HTJ2K with the original pixels."""
    stack, settings = arrival_stack.stack, arrival_stack.settings
    worker = stack.by_name["worker-cpu"]
    study, files, sops = _ct_study(tmp_path / "big", 150, size=512)
    originals = {sop: _pixels(path.read_bytes()) for sop, path in zip(sops, files, strict=True)}
    with OrthancClient.from_settings(settings) as client:
        storescu(settings, files)
        sent = client.last_change_seq()
        deadline = time.monotonic() + 120
        while _swaps_since(client, sent) < 5:  # the check is under way (it indexes at its end)
            assert time.monotonic() < deadline, "the check never started\n" + arrival_stack.log()
            time.sleep(0.1)
    pid = stack.running_pid(worker)
    assert pid is not None
    for victim in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    reap(pid, timeout_s=10)
    with OrthancClient.from_settings(settings) as client:
        killed_at = _swaps_since(client, sent)
    assert killed_at < len(sops), "the check finished before the kill: make the study bigger"

    with OrthancClient.from_settings(settings) as client:
        in_orthanc = {sop for sop in sops if client.lookup(sop) is not None}
    backed_up = {
        str(parse_dicom(path.read_bytes()).SOPInstanceUID)
        for path in settings.backup_dir.glob("*.dcm")
    }
    assert set(sops) <= in_orthanc | backed_up, "an instance was lost"

    stack.up(["worker-cpu"])
    # The swaps made before the kill make the study stable again: a second arrival may finish
    # the check first. The killed run's arrival must be re-run and done all the same.
    deadline = time.monotonic() + 400
    while not (rows := _arrivals(settings, study)) or any(
        r.state != ArrivalState.DONE for r in rows
    ):
        assert not [r for r in rows if r.state == ArrivalState.FAILED], rows
        assert time.monotonic() < deadline, f"not all done: {rows}\n{arrival_stack.log()}"
        time.sleep(1)
    killed = rows[0]
    assert killed.attempts >= 2, rows  # the killed run, then the re-run
    print(f"\nkilled after {killed_at} of {len(sops)} swaps; {len(rows)} arrivals, all done")
    indexed = _indexed(settings, sops)
    assert len(indexed) == len(sops)
    assert all(i.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for i in indexed)
    with OrthancClient.from_settings(settings) as client:
        for sop in sops:
            orthanc_id = client.lookup(sop)
            assert orthanc_id is not None, f"{sop} is not in Orthanc"
            assert np.array_equal(_pixels(client.get_instance_file(orthanc_id)), originals[sop])
