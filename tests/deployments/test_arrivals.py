"""The arrival loop with real parts: `storescu` sends a study, and without any command the
stack's arrival watcher hands it to the cpu worker, which brings it to verified HTJ2K and
indexes it; the same files sent again change nothing; a late series is processed alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlmodel import select

from common.db import ArrivalState, Instance, StudyArrival, session_scope
from common.settings import Settings
from neuronova.stack.supervisor import LocalStack
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.htj2k import HTJ2K_LOSSLESS_SYNTAXES
from tests.flows.test_check_htj2k import storescu
from tests.support.dicom_factory import make_ct, write

pytestmark = pytest.mark.integration


def _arrivals(settings: Settings, orthanc_study_id: str) -> list[StudyArrival]:
    with session_scope(settings.resolved_database_url) as session:
        return list(
            session.exec(
                select(StudyArrival)
                .where(StudyArrival.orthanc_study_id == orthanc_study_id)
                .order_by(StudyArrival.change_seq)  # type: ignore[arg-type]
            )
        )


def _wait_until_done(
    settings: Settings, study_uid: str, count: int, log: str
) -> list[StudyArrival]:
    """Until `count` arrivals of the study are done (the watcher and the worker at work)."""
    deadline = time.monotonic() + 300
    with OrthancClient.from_settings(settings) as client:
        while True:
            orthanc_id = client.lookup(study_uid, "Study")
            rows = _arrivals(settings, orthanc_id) if orthanc_id else []
            done = [r for r in rows if r.state == ArrivalState.DONE]
            if len(done) >= count:
                return rows
            assert not [r for r in rows if r.state == ArrivalState.FAILED], rows
            assert time.monotonic() < deadline, f"not processed in 5 minutes: {rows}\n{log}"
            time.sleep(1)


def test_a_study_sent_by_cstore_is_processed_without_any_command(
    prefect_server: str, orthanc: Settings, tmp_path: Path
) -> None:
    from deployments.work_pools import register_deployments

    register_deployments(orthanc)
    # The watcher starts at the end of the change log: the studies earlier tests left in this
    # Orthanc are not this test's.
    settings = orthanc.model_copy(update={"arrivals_from": "now"})
    stack = LocalStack(settings)
    try:
        status = stack.up(["worker-cpu", "arrivals"])
        assert status["components"]["arrivals"]["healthy"], status["components"]["arrivals"]
        study, series = generate_uid(), generate_uid()
        first = [make_ct(i, study=study, series=series) for i in range(3)]
        files = [write(ds, tmp_path / f"a{i}.dcm") for i, ds in enumerate(first)]
        started = time.monotonic()
        storescu(settings, files)

        def log() -> str:
            return "\n".join(
                stack.log_path(stack.by_name[n]).read_text()[-3000:]
                for n in ("arrivals", "worker-cpu")
            )

        rows = _wait_until_done(settings, study, 1, log())
        print(f"\nsent → HTJ2K verified and indexed in {time.monotonic() - started:.1f} s")
        with session_scope(settings.resolved_database_url) as session:
            indexed = [session.get(Instance, str(ds.SOPInstanceUID)) for ds in first]
        assert all(i is not None and i.transfer_syntax in HTJ2K_LOSSLESS_SYNTAXES for i in indexed)
        assert rows[0].study_instance_uid == study and "replaced 3" in (rows[0].detail or "")

        # The same files again: Orthanc keeps the first copies; after the check's own swaps
        # became stable, the study holds nothing new.
        storescu(settings, files)
        late_series = generate_uid()
        late = [make_ct(i, study=study, series=late_series) for i in range(3, 5)]
        storescu(settings, [write(ds, tmp_path / f"b{i}.dcm") for i, ds in enumerate(late)])
        rows = _wait_until_done(settings, study, len(rows) + 1, log())
        details = [r.detail or "" for r in rows if r.state == ArrivalState.DONE]
        assert any("replaced 2" in d and "1 new series" in d for d in details), details
        assert sum("replaced 3" in d for d in details) == 1, details  # the first series once
    finally:
        stack.down(["arrivals", "worker-cpu"])
