"""Flow `process_arrival`: a study that became stable in Orthanc gets what ingest gives files.

The arrival watcher (tasks/archive/arrivals.py) starts one run per StableStudy change:
check the study (every instance that is not verified HTJ2K lossless is transcoded, verified,
swapped in place and indexed; lossy stays lossy; another patient's files are conflicts), then
the same hand-offs as ingest for what is new: the patient synced (`sync_patient`), then the AI
(`run_inference`) when a new MR series arrived. A study whose instances were all settled
already (sent twice, or stable again after the check's own replacements) gets no hand-off.
The run marks its arrival done; a run that fails is submitted again by the watcher, and
re-running it is safe (the check restores any original an interrupted swap left behind).
"""

from __future__ import annotations

from collections import Counter
from typing import NotRequired, TypedDict

from prefect import flow, get_run_logger
from sqlmodel import col, select

from common.db import Instance, Series, ensure_schema, session_scope
from common.logs import correlation
from common.settings import Settings
from flows import REPORTED
from flows.ingest_study import read_study, sync_study_patient
from tasks.archive.arrivals import mark_arrival_done
from tasks.archive.check import CheckInstanceReport, CheckOutcome, CheckStatus
from tasks.archive.index import patients_of_studies
from tasks.archive.prefect_tasks import check_study_task, recover_backups_task
from tasks.inference.results import InferenceReport
from tasks.patients.sync import PatientSyncReport

# What the check did that makes an instance new to the index.
NEWLY_INDEXED = frozenset({CheckStatus.REPLACED, CheckStatus.INDEXED, CheckStatus.KEPT})


class ArrivalReport(TypedDict):
    """What one `process_arrival` run did."""

    orthanc_study_id: str
    study_instance_uid: str | None
    counts: dict[str, int]  # per CheckStatus value
    new_series: list[str]
    instances: list[CheckInstanceReport]
    patients: NotRequired[list[PatientSyncReport]]
    inference: NotRequired[list[InferenceReport]]


@flow(name="process_arrival", **REPORTED)
def process_arrival(orthanc_study_id: str, change_seq: int = 0) -> ArrivalReport:
    """Check one stable study, then hand on what is new in it."""
    settings = Settings()
    logger = get_run_logger()
    ensure_schema(settings.resolved_database_url)
    recover_backups_task(settings)
    outcomes = check_study_task(settings, orthanc_study_id)
    counts = Counter(o.status.value for o in outcomes)
    study_uid, new_series, modalities = _what_is_new(settings, outcomes)
    report = ArrivalReport(
        orthanc_study_id=orthanc_study_id,
        study_instance_uid=study_uid,
        counts=dict(counts),
        new_series=sorted(new_series),
        instances=[o.as_dict() for o in outcomes],
    )
    with correlation(study_uid=study_uid or ""):
        logger.info("arrival checked: %s; new series: %d", dict(counts), len(new_series))
        if study_uid is not None and new_series:
            if settings.patient_sync_after_ingest:
                mrns = patients_of_studies(settings.resolved_database_url, [study_uid])
                report["patients"] = [sync_study_patient(mrn) for mrn in mrns]
            if settings.inference_after_ingest and "MR" in modalities:
                report["inference"] = [read_study(settings, study_uid)]
    mark_arrival_done(settings, orthanc_study_id, change_seq, study_uid, _summary(report))
    return report


def _what_is_new(
    settings: Settings, outcomes: list[CheckOutcome]
) -> tuple[str | None, set[str], set[str]]:
    """The study's UID (from the index), the series with instances indexed by this run, and
    those series' modalities."""
    settled = [o.sop_instance_uid for o in outcomes if o.sop_instance_uid]
    new = {o.sop_instance_uid for o in outcomes if o.status in NEWLY_INDEXED}
    if not settled:
        return None, set(), set()
    with session_scope(settings.resolved_database_url) as session:
        rows = session.exec(
            select(
                Instance.sop_instance_uid,
                Instance.study_instance_uid,
                Instance.series_instance_uid,
                Series.modality,
            )
            .join(Series, col(Series.series_instance_uid) == col(Instance.series_instance_uid))
            .where(col(Instance.sop_instance_uid).in_(settled))
        ).all()
    study = rows[0][1] if rows else None
    new_rows = [(series, modality) for sop, _, series, modality in rows if sop in new]
    return study, {s for s, _ in new_rows}, {m for _, m in new_rows if m}


def _summary(report: ArrivalReport) -> str:
    parts = [", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())) or "no instances"]
    parts.append(f"{len(report['new_series'])} new series")
    if "inference" in report:
        parts.append("AI: " + ", ".join(str(r.get("status")) for r in report["inference"]))
    return "; ".join(parts)[:512]
