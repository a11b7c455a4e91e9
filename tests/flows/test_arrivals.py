"""Studies that arrive by C-STORE: found in the real Orthanc's change log once stable, recorded
once, handed to Prefect durably (kept while the server is down, one run per arrival), and
processed by `process_arrival` (HTJ2K, index, hand-offs only for what is new).

The watcher's own state (cursor, arrivals) is kept in a database of each test's own, so that
the studies other tests send are not this test's arrivals; the flow uses the session's index.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
from pydicom.uid import generate_uid
from sqlmodel import select

from common.db import ArrivalState, Instance, StudyArrival, ensure_schema, session_scope, utcnow
from common.settings import Settings
from flows.process_arrival import process_arrival
from neuronova.stack.ports import free_ports
from neuronova.stack.supervisor import LocalStack
from tasks.archive.arrivals import (
    Arrival,
    follow_submitted,
    read_new_arrivals,
    record_uploaded_studies,
    submit_due_arrivals,
)
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.htj2k import HTJ2K_LOSSLESS_SYNTAXES
from tests.flows.test_check_htj2k import storescu
from tests.support.dicom_factory import make_ct, write

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("orthanc", "prefect_harness")]


def _watcher_settings(orthanc: Settings, tmp_path: Path) -> Settings:
    """The session's Orthanc, the watcher's state in a database of this test's own, starting
    at the end of the change log."""
    settings = orthanc.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'watcher.db'}", "arrivals_from": "now"}
    )
    ensure_schema(settings.resolved_database_url)
    return settings


def _send_study(orthanc: Settings, folder: Path, count: int = 3) -> tuple[str, list[str]]:
    study, series = generate_uid(), generate_uid()
    originals = [make_ct(i, study=study, series=series) for i in range(count)]
    storescu(orthanc, [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(originals)])
    return study, [str(ds.SOPInstanceUID) for ds in originals]


def _arrivals_of(settings: Settings, orthanc_study_id: str) -> list[StudyArrival]:
    with session_scope(settings.resolved_database_url) as session:
        return list(
            session.exec(
                select(StudyArrival).where(StudyArrival.orthanc_study_id == orthanc_study_id)
            )
        )


def _wait_for_arrival(settings: Settings, client: OrthancClient, study_uid: str) -> StudyArrival:
    """Read the change log until the study's StableStudy is recorded (StableAge is 2 s here)."""
    deadline = time.monotonic() + 60
    while True:
        read_new_arrivals(settings, client)
        orthanc_id = client.lookup(study_uid, "Study")
        found = _arrivals_of(settings, orthanc_id) if orthanc_id else []
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the study never became stable"
        time.sleep(0.5)


def _sent_and_stable(
    orthanc: Settings, settings: Settings, tmp_path: Path
) -> tuple[str, list[str], StudyArrival]:
    """From the end of the change log: a study sent by C-STORE, and its recorded arrival."""
    with OrthancClient.from_settings(settings) as client:
        read_new_arrivals(settings, client)
        study, sops = _send_study(orthanc, tmp_path / "study")
        return study, sops, _wait_for_arrival(settings, client, study)


def test_a_stable_study_is_recorded_once_and_the_cursor_moves_on(
    orthanc: Settings, tmp_path: Path
) -> None:
    settings = _watcher_settings(orthanc, tmp_path)
    with OrthancClient.from_settings(settings) as client:
        assert read_new_arrivals(settings, client) == 0  # starts at the end: nothing old
        study, _ = _send_study(orthanc, tmp_path / "study")
        arrival = _wait_for_arrival(settings, client, study)
        assert arrival.state == ArrivalState.PENDING and arrival.attempts == 0
        # Read again (a restart, a second pass): the same change is not a second arrival.
        read_new_arrivals(settings, client)
        settings_again = settings.model_copy(update={"arrivals_from": "beginning"})
        read_new_arrivals(settings_again, client)  # the cursor wins over the start setting
        assert len(_arrivals_of(settings, arrival.orthanc_study_id)) == 1


def test_an_arrival_waits_while_prefect_is_down_and_then_gets_one_run(
    orthanc: Settings, stack_prefect: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from deployments.work_pools import register_deployments
    from neuronova.arrivals_watcher import submit_run

    settings = _watcher_settings(orthanc, tmp_path)
    _, _, arrival = _sent_and_stable(orthanc, settings, tmp_path)
    key = (arrival.orthanc_study_id, arrival.change_seq)
    (closed_port,) = free_ports(1)
    down = {PREFECT_API_URL: f"http://127.0.0.1:{closed_port}/api"}
    with temporary_settings(down):
        assert submit_due_arrivals(settings, submit_run) == 0
    (kept,) = _arrivals_of(settings, arrival.orthanc_study_id)
    assert kept.state == ArrivalState.PENDING and kept.attempts == 1
    assert kept.detail and "could not create its run" in kept.detail
    assert kept.next_attempt_at > utcnow()  # backs off before the next try

    up = {
        PREFECT_API_URL: stack_prefect,
        PREFECT_API_AUTH_STRING: orthanc.stack_prefect_auth_string(),
    }
    with temporary_settings(up):
        register_deployments(orthanc)
        with session_scope(settings.resolved_database_url) as session:
            row = session.get(StudyArrival, key)
            assert row is not None
            row.next_attempt_at = utcnow() - timedelta(seconds=1)
        assert submit_due_arrivals(settings, submit_run) == 1
        assert submit_due_arrivals(settings, submit_run) == 0  # submitted: never twice
        (submitted,) = _arrivals_of(settings, arrival.orthanc_study_id)
        assert submitted.state == ArrivalState.SUBMITTED and submitted.flow_run_id
        # A lost answer, asked again with the same key, finds the same run.
        again = submit_run(Arrival(key[0], key[1], submitted.attempts))
        assert again == submitted.flow_run_id
        with get_client(sync_client=True) as prefect:
            run = prefect.read_flow_run(UUID(submitted.flow_run_id))
            assert run.parameters == {"orthanc_study_id": key[0], "change_seq": key[1]}
            prefect.delete_flow_run(run.id)  # no worker of a later test should take it


def test_a_run_that_crashed_is_submitted_again_then_left_failed(
    orthanc: Settings, tmp_path: Path
) -> None:
    settings = _watcher_settings(orthanc, tmp_path).model_copy(update={"arrival_max_attempts": 2})
    with session_scope(settings.resolved_database_url) as session:
        session.add(StudyArrival(orthanc_study_id="s-crash", change_seq=7))
    runs = iter(["run-1", "run-2"])
    assert submit_due_arrivals(settings, lambda arrival: next(runs)) == 1
    assert follow_submitted(settings, lambda run_id: "RUNNING") == 0  # still going: left alone
    assert follow_submitted(settings, lambda run_id: "CRASHED") == 1  # a worker killed
    assert submit_due_arrivals(settings, lambda arrival: next(runs)) == 1
    (row,) = _arrivals_of(settings, "s-crash")
    assert (row.state, row.attempts, row.flow_run_id) == (ArrivalState.SUBMITTED, 2, "run-2")
    assert follow_submitted(settings, lambda run_id: "FAILED") == 0
    (row,) = _arrivals_of(settings, "s-crash")
    assert row.state == ArrivalState.FAILED and "re-run" in (row.detail or "")


def test_process_arrival_brings_the_study_to_htj2k_and_hands_on_only_what_is_new(
    orthanc: Settings, tmp_path: Path
) -> None:
    settings = _watcher_settings(orthanc, tmp_path)
    study, sops, arrival = _sent_and_stable(orthanc, settings, tmp_path)

    first = process_arrival(arrival.orthanc_study_id, arrival.change_seq)

    assert first["study_instance_uid"] == study
    assert first["counts"] == {"replaced": 3} and len(first["new_series"]) == 1
    assert "inference" not in first  # CT: nothing for the brain-lesion model
    with session_scope(orthanc.resolved_database_url) as session:
        rows = [session.get(Instance, sop) for sop in sops]
        done = session.get(StudyArrival, (arrival.orthanc_study_id, arrival.change_seq))
    assert all(r is not None and r.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for r in rows)
    assert done is not None and done.state == ArrivalState.DONE and done.study_instance_uid == study
    # Stable again (the check's own replacements, or the study sent twice): nothing new.
    second = process_arrival(arrival.orthanc_study_id, arrival.change_seq + 1)
    assert second["counts"] == {"ok": 3} and second["new_series"] == {}


def test_two_arrivals_of_one_study_run_one_after_the_other(
    orthanc: Settings, tmp_path: Path
) -> None:
    """Two runs for one study at once (a re-run beside a newer arrival): the second waits for
    the first's lock, then finds everything settled; nothing fails, nothing is swapped twice."""
    from concurrent.futures import ThreadPoolExecutor

    settings = _watcher_settings(orthanc, tmp_path)
    _study, sops, arrival = _sent_and_stable(orthanc, settings, tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(process_arrival, arrival.orthanc_study_id, seq) for seq in (10, 11)]
        reports = [run.result(timeout=300) for run in runs]
    assert sorted(tuple(r["counts"].items()) for r in reports) == [
        (("ok", 3),),
        (("replaced", 3),),
    ]
    with session_scope(orthanc.resolved_database_url) as session:
        rows = [session.get(Instance, sop) for sop in sops]
    assert all(r is not None and r.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for r in rows)


def test_an_uploaded_study_is_an_arrival_whose_series_are_new(
    orthanc: Settings, tmp_path: Path
) -> None:
    """STOW-RS stores through ingest (indexed at once), then records the study as an arrival
    dated when the upload began: its run finds everything settled, yet hands the series on."""
    from tasks.ingest.batch import ingest_batch
    from tasks.ingest.inputs import InputRef

    study, series = generate_uid(), generate_uid()
    files = [write(make_ct(i, study=study, series=series), tmp_path / f"{i}.dcm") for i in range(2)]
    received_at = utcnow()
    ingest_batch(orthanc, [InputRef(str(f)) for f in files])
    record_uploaded_studies(orthanc, [study], received_at)
    with session_scope(orthanc.resolved_database_url) as session:
        (arrival,) = session.exec(
            select(StudyArrival).where(StudyArrival.study_instance_uid == study)
        ).all()
    with OrthancClient.from_settings(orthanc) as client:
        assert client.lookup(study, "Study") == arrival.orthanc_study_id

    report = process_arrival(arrival.orthanc_study_id, arrival.change_seq)

    assert report["counts"] == {"ok": 2} and report["new_series"] == {series: "CT"}


@pytest.mark.parametrize(
    ("calling_aet", "why"),
    [("INTRUDER", "an AET not on the list"), ("STORESCUX", "a look-alike of an allowed AET")],
)
def test_a_cstore_from_a_modality_not_on_the_list_is_refused(
    orthanc: Settings, tmp_path: Path, calling_aet: str, why: str
) -> None:
    import subprocess

    ds = make_ct(0, study=generate_uid(), series=generate_uid())
    sent = subprocess.run(
        [
            "storescu",
            "-aet",
            calling_aet,
            "-aec",
            orthanc.orthanc_aet,
            "127.0.0.1",
            str(orthanc.orthanc_dicom_port),
            str(write(ds, tmp_path / "x.dcm")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode != 0, (why, sent.stdout, sent.stderr)
    with OrthancClient.from_settings(orthanc) as client:
        assert client.lookup(str(ds.SOPInstanceUID)) is None, why
    # Orthanc's log names the refused caller (an operator sees who tried).
    stack = LocalStack(orthanc)
    log = stack.log_path(stack.by_name["orthanc"]).read_text()
    assert f'Rejected Store request from remote DICOM modality with AET "{calling_aet}"' in log


def test_a_run_left_pending_by_a_stopped_worker_is_crashed_and_its_arrival_runs_again(
    orthanc: Settings, stack_prefect: str, tmp_path: Path
) -> None:
    """A worker stopped between taking a run (Pending) and starting it: no worker takes a
    Pending run again and it never sent a heartbeat, so the watcher crashes it once it has
    waited longer than a live one would, and the arrival is submitted again."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from prefect.states import Pending

    from deployments.work_pools import register_deployments
    from neuronova.arrivals_watcher import run_state, submit_run

    settings = _watcher_settings(orthanc, tmp_path)
    api = {
        PREFECT_API_URL: stack_prefect,
        PREFECT_API_AUTH_STRING: orthanc.stack_prefect_auth_string(),
    }
    with temporary_settings(api), get_client(sync_client=True) as prefect:
        register_deployments(orthanc)
        with session_scope(settings.resolved_database_url) as session:
            session.add(StudyArrival(orthanc_study_id="s-pending", change_seq=3))
        assert submit_due_arrivals(settings, submit_run) == 1
        (row,) = _arrivals_of(settings, "s-pending")
        assert row.flow_run_id is not None
        run_id = UUID(row.flow_run_id)
        try:
            prefect.set_flow_run_state(run_id, Pending(), force=True)  # taken, never started
            assert run_state(row.flow_run_id, stuck_after_s=600) == "PENDING"  # not yet stuck
            time.sleep(1.5)
            assert follow_submitted(settings, lambda r: run_state(r, stuck_after_s=1)) == 1
            crashed = prefect.read_flow_run(run_id)
            assert crashed.state is not None and crashed.state.type.value == "CRASHED"
            (again,) = _arrivals_of(settings, "s-pending")
            assert again.state == ArrivalState.PENDING and "CRASHED" in (again.detail or "")
        finally:
            prefect.delete_flow_run(run_id)  # no worker of a later test should take it
