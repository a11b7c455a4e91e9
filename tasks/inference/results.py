"""The AI result kept: the DICOM SEG stored through ingest (verified, indexed) and the result row.

Idempotency rests on the business key (study, series read, model, version): the SEG's UIDs are
derived from it, so a second run finds the SEG in the archive index instead of making another,
and the result row is unique on it. A series that arrives later is a new key: its own reading.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from pydicom.uid import generate_uid
from sqlmodel import select
from sqlmodel.sql.expression import SelectOfScalar

from common.db import InferenceFinding, InferenceResult, Study, session_scope, utcnow
from common.errors import NeuroNovaError
from common.settings import Settings
from tasks.inference.alerts import announce_ai_state
from tasks.inference.lesions import Lesion, key_image
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import InputRef
from tasks.ingest.prepare import IngestStatus


class SegNotStored(NeuroNovaError):
    """The SEG did not reach the archive verified (the message gives ingest's reason)."""


def seg_uids(study_uid: str, series_uid: str, model: str, version: str) -> tuple[str, str]:
    """(series UID, SOP instance UID) of the SEG: the same for the same series read by the same
    model version."""
    key = [study_uid, series_uid, model, version]
    return (
        generate_uid(entropy_srcs=[*key, "seg-series"]),
        generate_uid(entropy_srcs=[*key, "seg-instance"]),
    )


def sr_uids(study_uid: str, series_uid: str, model: str, version: str) -> tuple[str, str]:
    """(series UID, SOP instance UID) of the TID 1500 SR beside the SEG: derived the same way."""
    key = [study_uid, series_uid, model, version]
    return (
        generate_uid(entropy_srcs=[*key, "sr-series"]),
        generate_uid(entropy_srcs=[*key, "sr-instance"]),
    )


def lesion_tracking_uids(
    study_uid: str, series_uid: str, model: str, version: str, count: int
) -> list[str]:
    """Each lesion's Tracking UID (SEG segment, SR group, FHIR Observation, verdict): derived,
    so that lesion n of the same series read by the same model version keeps its UID."""
    key = [study_uid, series_uid, model, version]
    return [generate_uid(entropy_srcs=[*key, f"lesion-{n}"]) for n in range(1, count + 1)]


def store_seg(
    settings: Settings, data: bytes, study_uid: str, sop_uid: str, kind: str = "SEG"
) -> Path:
    """Keep a result object (the SEG, the SR: `kind`) under results/ and ingest it (verified,
    indexed); returns the kept file.

    Through ingest rather than a bare upload: the archive index must place it in its study,
    or the gate would not let the viewer open it.
    """
    folder = settings.results_dir / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{sop_uid}.dcm"
    if not path.exists():  # an earlier run's file is the same result: keep its bytes
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    (outcome,) = ingest_batch(settings, [InputRef(str(path))])
    if outcome.status not in (IngestStatus.STORED, IngestStatus.DUPLICATE):
        raise SegNotStored(
            f"the {kind} {path.name} was not stored: {outcome.status}, {outcome.reason}"
        )
    return path


def find_result(
    settings: Settings, study_uid: str, series_uid: str, model: str, version: str
) -> InferenceResult | None:
    with session_scope(settings.resolved_database_url) as session:
        return session.exec(_by_key(study_uid, series_uid, model, version)).first()


def _by_key(
    study_uid: str, series_uid: str, model: str, version: str
) -> SelectOfScalar[InferenceResult]:
    return select(InferenceResult).where(
        InferenceResult.study_instance_uid == study_uid,
        InferenceResult.series_instance_uid == series_uid,
        InferenceResult.model_name == model,
        InferenceResult.model_version == version,
    )


def save_findings(
    settings: Settings,
    result_id: int,
    lesions: list[Lesion],
    tracking_uids: list[str],
    slice_sop_uids: tuple[str, ...],
) -> list[InferenceFinding]:
    """One row per lesion of the reading (its segment number, Tracking UID, volume and key
    slice), made once: a repeated run finds the rows the first made."""
    with session_scope(settings.resolved_database_url) as session:
        known = {
            f.number: f
            for f in session.exec(
                select(InferenceFinding).where(InferenceFinding.result_id == result_id)
            )
        }
        for lesion, tracking_uid in zip(lesions, tracking_uids, strict=True):
            if lesion.number in known:
                continue
            finding = InferenceFinding(
                result_id=result_id,
                number=lesion.number,
                tracking_uid=tracking_uid,
                label=lesion.label,
                volume_ml=round(lesion.volume_ml, 3),
                key_sop_instance_uid=key_image(slice_sop_uids, lesion.key_slice),
            )
            session.add(finding)
            known[lesion.number] = finding
        session.flush()
        return sorted(known.values(), key=lambda f: f.number)


def findings_of(settings: Settings, result_id: int) -> list[InferenceFinding]:
    """A reading's findings, lesion 1 first (none for readings made before findings were kept)."""
    with session_scope(settings.resolved_database_url) as session:
        query = select(InferenceFinding).where(InferenceFinding.result_id == result_id)
        return sorted(session.exec(query), key=lambda f: f.number)


def record_observations(
    settings: Settings, result_id: int, by_tracking_uid: dict[str, str]
) -> None:
    """Each finding's FHIR Observation id, once FHIR has it."""
    with session_scope(settings.resolved_database_url) as session:
        query = select(InferenceFinding).where(InferenceFinding.result_id == result_id)
        for finding in session.exec(query):
            observation = by_tracking_uid.get(finding.tracking_uid)
            if observation and finding.fhir_observation_id != observation:
                finding.fhir_observation_id = observation
                session.add(finding)


class AiState(StrEnum):
    """Where a study's AI reading stands, as the worklist shows it (`studies.ai_state`)."""

    QUEUED = "queued"  # handed to run_inference, not started yet
    RUNNING = "running"
    FAILED = "failed"  # the last run failed: `neuronova infer STUDY` runs it again
    DONE = "done"  # read (its readings say what was found)


def set_ai_state(settings: Settings, study_uid: str, state: AiState | None) -> None:
    """Record the study's AI state (None: no reading applies) and, when it changed, announce it
    to the open worklists once it is committed; a study not indexed is left."""
    value = str(state) if state is not None else None
    changed_for: str | None = None  # the study's patient, when the state changed
    with session_scope(settings.resolved_database_url) as session:
        study = session.get(Study, study_uid)
        if study is not None and study.ai_state != value:
            study.ai_state = value
            session.add(study)
            changed_for = study.patient_id
    if changed_for is not None:
        announce_ai_state(settings, study_uid, changed_for, value)


def save_result(settings: Settings, values: dict[str, Any]) -> InferenceResult:
    """Insert or update the row for (study, series, model, version); timings merged, not
    replaced."""
    key = (
        values["study_instance_uid"],
        values["series_instance_uid"],
        values["model_name"],
        values["model_version"],
    )
    with session_scope(settings.resolved_database_url) as session:
        row = session.exec(_by_key(*key)).first()
        timings = dict(values.pop("timings", {}))
        if row is None:
            row = InferenceResult(**values, timings=json.dumps(timings))
        else:
            for name, value in values.items():
                setattr(row, name, value)
            row.timings = json.dumps(json.loads(row.timings) | timings)
        if row.status == InferenceStatus.COMPLETED and row.completed_at is None:
            row.completed_at = utcnow()
        session.add(row)
        session.flush()
        session.refresh(row)
        return row


class InferenceStatus(StrEnum):
    """Where a study's AI reading stands (`inference_results.status`, and the reports)."""

    SEGMENTED = "segmented"  # the SEG is stored; the FHIR report is owed
    COMPLETED = "completed"  # the SEG is stored and the report is in FHIR
    NO_SUITABLE_SERIES = "no-suitable-series"  # nothing the model can read (not recorded)
    FAILED = "failed"  # in ingest's report: the hand-off did not complete
    RUNNING = "running"  # in ingest's report: still running when ingest stopped waiting


class ModelReport(TypedDict):
    name: str
    version: str
    sha256: str


class SegReport(TypedDict):
    series_instance_uid: str | None
    sop_instance_uid: str | None


class FhirReferences(TypedDict):
    report: str | None  # DiagnosticReport/<id>, None while owed
    patient: str | None  # Patient/<id>


class AlertReport(TypedDict):
    """Whether the clinicians have been told (an alert that could not go out is kept owed, and
    the next run of the study sends it)."""

    sent_at: str | None  # ISO 8601
    owed: bool
    reason: NotRequired[str]  # why it is owed, or why none is sent (alerts not configured)


class InferenceReport(TypedDict):
    """What `run_inference` returns and `neuronova infer --json` prints.

    A study with nothing to read, or a hand-off that ingest could not complete, has only
    `status`, `study_instance_uid` and `message` (and `failed` for the latter).
    """

    status: InferenceStatus
    study_instance_uid: str
    reused: NotRequired[bool]
    series_instance_uid: NotRequired[str]
    patient_id: NotRequired[str]
    model: NotRequired[ModelReport]
    device: NotRequired[str]
    lesion_count: NotRequired[int]
    lesion_volume_ml: NotRequired[float]
    seg: NotRequired[SegReport]
    sr: NotRequired[SegReport]  # the same two UIDs, of the TID 1500 SR
    fhir: NotRequired[FhirReferences]
    note: NotRequired[str | None]
    timings: NotRequired[dict[str, float]]
    alert: NotRequired[AlertReport]
    message: NotRequired[str]
    failed: NotRequired[bool]


def result_summary(row: InferenceResult, *, reused: bool) -> InferenceReport:
    """The report of a recorded result."""
    report = InferenceReport(
        status=InferenceStatus(row.status),
        reused=reused,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        patient_id=row.patient_id,
        model=ModelReport(name=row.model_name, version=row.model_version, sha256=row.model_sha256),
        device=row.device,
        lesion_count=row.lesion_count,
        lesion_volume_ml=row.lesion_volume_ml,
        seg=SegReport(
            series_instance_uid=row.seg_series_uid,
            sop_instance_uid=row.seg_sop_instance_uid,
        ),
        sr=SegReport(
            series_instance_uid=row.sr_series_uid, sop_instance_uid=row.sr_sop_instance_uid
        ),
        fhir=FhirReferences(
            report=f"DiagnosticReport/{row.fhir_report_id}" if row.fhir_report_id else None,
            patient=f"Patient/{row.fhir_patient_id}" if row.fhir_patient_id else None,
        ),
        note=row.note,
        timings=json.loads(row.timings),
    )
    if row.status == InferenceStatus.COMPLETED:  # before that there is nothing to tell yet
        sent = row.alerted_at.isoformat() if row.alerted_at else None
        report["alert"] = AlertReport(sent_at=sent, owed=sent is None)
    return report
