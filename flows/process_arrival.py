"""Flow `process_arrival`: a study that became stable in Orthanc gets what ingest gives files.

The arrival watcher (tasks/archive/arrivals.py) starts one run per StableStudy change:
check the study (every instance that is not verified HTJ2K lossless is transcoded, verified,
swapped in place and indexed; lossy stays lossy; another patient's files are conflicts), then
the same hand-offs as ingest for what is new: the patient synced (`sync_patient`), then the AI
(`run_inference`, choosing among the new MR series only) when a new MR series arrived. A study
whose instances were all settled already (sent twice, or stable again after the check's own
replacements) gets no hand-off.

What is new: the series with instances this run indexed, or that any attempt at this arrival
indexed (verified after the watcher recorded the arrival), so a re-run after a worker died
mid-study still hands on what the first attempt already checked. One run holds a study at a
time (tasks/archive/study_lock.py): a second arrival of it waits. The run marks its arrival
done; a run that fails is submitted again by the watcher, and re-running it is safe (the check
restores any original an interrupted swap left behind, at once for a re-run of this arrival;
the hand-offs are idempotent).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import NotRequired, TypedDict

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from sqlmodel import col, select

from common.db import Instance, Series, as_utc, ensure_schema, session_scope
from common.logs import correlation
from common.settings import Settings
from flows import REPORTED
from flows.ingest_study import read_study, sync_study_patient
from tasks.archive.arrivals import mark_arrival_done, read_arrival
from tasks.archive.check import CheckInstanceReport, CheckOutcome, CheckStatus
from tasks.archive.index import patients_of_studies
from tasks.archive.prefect_tasks import check_study_task, recover_backups_task
from tasks.archive.study_lock import study_lock
from tasks.inference.results import InferenceReport
from tasks.patients.sync import PatientSyncReport

# What the check did that makes an instance new to the index.
NEWLY_INDEXED = frozenset({CheckStatus.REPLACED, CheckStatus.INDEXED, CheckStatus.KEPT})


class ArrivalReport(TypedDict):
    """What one `process_arrival` run did."""

    orthanc_study_id: str
    study_instance_uid: str | None
    counts: dict[str, int]  # per CheckStatus value
    new_series: dict[str, str]  # series UID → modality
    instances: list[CheckInstanceReport]
    patients: NotRequired[list[PatientSyncReport]]
    inference: NotRequired[list[InferenceReport]]


@flow(name="process_arrival", **REPORTED)
def process_arrival(orthanc_study_id: str, change_seq: int = 0) -> ArrivalReport:
    """Check one stable study, then hand on what is new in it."""
    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    # One run per study at a time (a late series, the study stable again, a re-run): the
    # lease outlives a holder that died by the time its run is marked Crashed.
    with study_lock(
        settings.resolved_database_url,
        orthanc_study_id,
        lease_s=settings.flow_crashed_after_s,
        wait_s=settings.handoff_timeout_s,
        who=str(flow_run.id or ""),
    ):
        return _process(settings, orthanc_study_id, change_seq)


def _process(settings: Settings, orthanc_study_id: str, change_seq: int) -> ArrivalReport:
    logger = get_run_logger()
    arrival = read_arrival(settings, orthanc_study_id, change_seq)
    # A re-run after a run died mid-swap: that study's originals go back at once.
    rerun = arrival is not None and arrival.attempts > 1
    recover_backups_task(settings, interrupted_study=orthanc_study_id if rerun else None)
    outcomes = check_study_task(settings, orthanc_study_id)
    counts = Counter(o.status.value for o in outcomes)
    since = arrival.recorded_at if arrival else None
    study_uid, new_series = _what_is_new(settings, outcomes, since)
    report = ArrivalReport(
        orthanc_study_id=orthanc_study_id,
        study_instance_uid=study_uid,
        counts=dict(counts),
        new_series=new_series,
        instances=[o.as_dict() for o in outcomes],
    )
    with correlation(study_uid=study_uid or ""):
        logger.info("arrival checked: %s; new series: %d", dict(counts), len(new_series))
        if study_uid is not None and new_series:
            if settings.patient_sync_after_ingest:
                mrns = patients_of_studies(settings.resolved_database_url, [study_uid])
                report["patients"] = [sync_study_patient(mrn) for mrn in mrns]
            new_mr = sorted(uid for uid, modality in new_series.items() if modality == "MR")
            if settings.inference_after_ingest and new_mr:
                report["inference"] = [read_study(settings, study_uid, new_mr)]
    mark_arrival_done(settings, orthanc_study_id, change_seq, study_uid, _summary(report))
    return report


def _what_is_new(
    settings: Settings, outcomes: list[CheckOutcome], since: datetime | None
) -> tuple[str | None, dict[str, str]]:
    """The study's UID (from the index) and its new series (UID → modality): those with
    instances indexed by this run, or verified since the arrival was recorded."""
    settled = [o.sop_instance_uid for o in outcomes if o.sop_instance_uid]
    new = {o.sop_instance_uid for o in outcomes if o.status in NEWLY_INDEXED}
    if not settled:
        return None, {}
    with session_scope(settings.resolved_database_url) as session:
        rows = [
            (i.sop_instance_uid, i.study_instance_uid, i.series_instance_uid, i.verified_at, m)
            for i, m in session.exec(
                select(Instance, Series.modality)
                .join(Series, col(Series.series_instance_uid) == col(Instance.series_instance_uid))
                .where(col(Instance.sop_instance_uid).in_(settled))
            )
        ]
    study = rows[0][1] if rows else None
    return study, {
        series: modality or ""
        for sop, _, series, verified_at, modality in rows
        if sop in new or (since is not None and as_utc(verified_at) >= since)
    }


def _summary(report: ArrivalReport) -> str:
    parts = [", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())) or "no instances"]
    parts.append(f"{len(report['new_series'])} new series")
    if "inference" in report:
        parts.append("AI: " + ", ".join(str(r.get("status")) for r in report["inference"]))
    return "; ".join(parts)[:512]
