"""Flow `run_inference(study_uid)`: the brain-lesion model's reading of one study.

choose the MR series → read it from Orthanc (HTJ2K decoded into one volume) → segment (GPU when
there is one; out of memory → smaller windows → the CPU) → DICOM SEG kept under results/ and
stored through ingest (verified, indexed, so the viewer may open it) → the patient resolved
(cache → FHIR → EMR) → Observations and a DiagnosticReport in FHIR → the result row → artifacts
(a table and the overlay PNG of the slice with the largest lesion area) → an alert to the
clinicians who may open the study (Redis → the webapp's alert streams).

Idempotent per (study, series read, model, version): a completed result is returned as it
stands; one whose FHIR part is owed (FHIR down, patient not yet known) gets only that part on the
next run. A series that arrives later is read on its own when the caller names it (`series_uids`:
the arrival's or the ingest's new series), and reported beside the first. A study with nothing
to read ends with a message, not a failure.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from common.db import InferenceResult, ensure_schema, utcnow
from common.logs import correlation
from common.settings import Settings
from flows import REPORTED
from tasks.inference.artifacts import publish_overlay, publish_result_table
from tasks.inference.lesions import key_image, label_lesions, measurements_of
from tasks.inference.prefect_tasks import (
    alert_clinicians_task,
    choose_series_task,
    publish_fhir_task,
    read_volume_task,
    segment_task,
    store_seg_task,
)
from tasks.inference.report import LesionFinding, LesionFindings
from tasks.inference.results import (
    AiState,
    AlertReport,
    InferenceReport,
    InferenceStatus,
    find_result,
    findings_of,
    lesion_tracking_uids,
    record_observations,
    result_summary,
    save_findings,
    save_result,
    seg_uids,
    set_ai_state,
    sr_uids,
)
from tasks.inference.segmentation import bundle_identity
from tasks.inference.series import NoSuitableSeries, SeriesChoice
from tasks.inference.verdict_fhir import send_verdicts
from tasks.patients.prefect_tasks import resolve_patient_task


@flow(name="run_inference", log_prints=True, **REPORTED)
def run_inference(
    study_uid: str, require_brain: bool = False, series_uids: list[str] | None = None
) -> InferenceReport:
    """Segment one study's brain MR and publish the result; see the module's docstring.

    `require_brain`: only read a series that a tag places in the head (ingest's trigger).
    `series_uids`: choose only among these series (what just arrived); None: the whole study.
    """
    settings = Settings()
    with correlation(study_uid=study_uid):  # on every log line of this run (common.logs)
        set_ai_state(settings, study_uid, AiState.RUNNING)
        try:
            report = _read_study(settings, study_uid, require_brain, series_uids)
        except BaseException:
            set_ai_state(settings, study_uid, AiState.FAILED)
            raise
        if report["status"] == InferenceStatus.NO_SUITABLE_SERIES:
            set_ai_state(settings, study_uid, None)
        else:
            set_ai_state(settings, study_uid, AiState.DONE)
        return report


def _read_study(
    settings: Settings, study_uid: str, require_brain: bool, series_uids: list[str] | None
) -> InferenceReport:
    logger = get_run_logger()
    ensure_schema(settings.resolved_database_url)
    model, version = bundle_identity(settings.model_bundle_dir)
    try:
        study_tags, choice = choose_series_task(settings, study_uid, require_brain, series_uids)
    except NoSuitableSeries as err:
        logger.warning("no inference for study %s: %s", study_uid, err)
        return InferenceReport(
            status=InferenceStatus.NO_SUITABLE_SERIES,
            study_instance_uid=study_uid,
            message=str(err),
        )
    existing = find_result(settings, study_uid, choice.series_uid, model, version)
    if existing is not None and existing.status == InferenceStatus.COMPLETED:
        logger.info("series already read by %s %s: nothing to read again", model, version)
        return _tell_clinicians(settings, existing, reused=True)

    if existing is None:
        if choice.brain_evidence is None:
            logger.warning(
                "series %s does not say it is of the head; read anyway", choice.series_uid
            )
        existing = _segment_and_store(settings, study_uid, study_tags, choice, model, version)
    return _publish_to_fhir(settings, existing)


def _segment_and_store(
    settings: Settings,
    study_uid: str,
    study_tags: dict[str, Any],
    choice: SeriesChoice,
    model: str,
    version: str,
) -> InferenceResult:
    logger = get_run_logger()
    started = time.perf_counter()
    volume = read_volume_task(settings, choice.orthanc_id)
    read_s = time.perf_counter() - started
    logger.info(
        "read %s: %s voxels at %s mm in %.2f s",
        choice.description or choice.series_uid,
        "x".join(map(str, volume.pixels.shape)),
        volume.spacing,
        read_s,
    )
    started = time.perf_counter()
    run = segment_task(settings, volume)
    segment_s = time.perf_counter() - started
    # Lesions numbered by size (the SEG's segments, the SR's groups, the findings), once.
    labels, lesions = label_lesions(run.mask, volume.spacing)
    measured = measurements_of(labels, lesions)
    logger.info(
        "segmented on %s in %.2f s: %d lesion(s), %.2f mL (%s)",
        run.device,
        segment_s,
        measured.count,
        measured.volume_ml,
        "; ".join(run.attempts),
    )
    started = time.perf_counter()
    store_seg_task(
        settings,
        volume,
        labels,
        study_uid,
        choice.series_uid,
        model,
        version,
        run.model_sha256,
        lesions,
    )
    seg_s = time.perf_counter() - started
    seg_series, seg_sop = seg_uids(study_uid, choice.series_uid, model, version)
    sr_series, sr_sop = sr_uids(study_uid, choice.series_uid, model, version)
    row = save_result(
        settings,
        {
            "study_instance_uid": study_uid,
            "series_instance_uid": choice.series_uid,
            "patient_id": str(study_tags.get("PatientID", "")),
            "model_name": model,
            "model_version": version,
            "model_sha256": run.model_sha256,
            "status": InferenceStatus.SEGMENTED,
            "device": run.device,
            "lesion_count": measured.count,
            "lesion_volume_ml": round(measured.volume_ml, 3),
            "seg_series_uid": seg_series,
            "seg_sop_instance_uid": seg_sop,
            "sr_series_uid": sr_series,
            "sr_sop_instance_uid": sr_sop,
            "key_sop_instance_uid": key_image(volume.sop_instance_uids, measured.largest_slice),
            "timings": {
                "read_s": round(read_s, 3),
                "segment_s": round(segment_s, 3),
                "seg_store_s": round(seg_s, 3),
            },
        },
    )
    assert row.id is not None
    tracking = lesion_tracking_uids(study_uid, choice.series_uid, model, version, len(lesions))
    save_findings(settings, row.id, lesions, tracking, volume.sop_instance_uids)
    publish_overlay(settings, study_uid, volume, run, measured.largest_slice, row)
    return row


def _publish_to_fhir(settings: Settings, row: InferenceResult) -> InferenceReport:
    """The FHIR part: patient, Observations, report; owed (not failed) when it cannot be paid."""
    logger = get_run_logger()
    started = time.perf_counter()
    patient = resolve_patient_task(settings, row.patient_id)
    if not patient["found"] or not patient["fhir_id"]:
        why = (
            f"patient {row.patient_id} is not known to the EMR"
            if not patient["found"]
            else "the FHIR server is unreachable; the patient's write-back is owed"
        )
        logger.warning("FHIR report not written: %s. Re-run once that is fixed.", why)
        row = save_result(settings, _key(row) | {"note": why[:512]})
        return result_summary(row, reused=False)
    result_id = row.id
    assert result_id is not None
    findings = LesionFindings(
        f"Patient/{patient['fhir_id']}",
        row.study_instance_uid,
        row.series_instance_uid,
        row.model_name,
        row.model_version,
        row.lesion_count,
        row.lesion_volume_ml,
        lesions=tuple(
            LesionFinding(f.number, f.tracking_uid, f.label, f.volume_ml)
            for f in findings_of(settings, result_id)
        ),
        seg_sop_uid=row.seg_sop_instance_uid,
        sr_sop_uid=row.sr_sop_instance_uid,
    )
    published = publish_fhir_task(settings, findings, row.model_sha256)
    report_id = published.report_id
    record_observations(settings, result_id, published.lesion_observation_ids)
    row = save_result(
        settings,
        _key(row)
        | {
            "status": InferenceStatus.COMPLETED,
            "fhir_report_id": report_id,
            "fhir_patient_id": patient["fhir_id"],
            "note": None,
            "timings": {"fhir_s": round(time.perf_counter() - started, 3)},
        },
    )
    publish_result_table(row)
    logger.info("DiagnosticReport/%s for Patient/%s", report_id, patient["fhir_id"])
    # Verdicts given while the report was owed wait for it: send them now.
    owed = send_verdicts(settings, result_id)
    if owed.sent or owed.owed:
        logger.info("readers' verdicts sent to FHIR: %d; still owed: %d", owed.sent, owed.owed)
    return _tell_clinicians(settings, row, reused=False)


def _tell_clinicians(settings: Settings, row: InferenceResult, *, reused: bool) -> InferenceReport:
    """The alert, once per result. The result is stored everywhere already, so an alert that
    cannot go out fails nothing: it stays owed (the report says why) and the next run of the
    study sends it."""
    result = result_summary(row, reused=reused)
    if row.alerted_at is not None:
        return result
    if not settings.resolved_redis_url:
        why = "alerts are not configured (NEURONOVA_REDIS_URL is empty)"
        result["alert"] = AlertReport(sent_at=None, owed=False, reason=why)
        return result
    alerted = alert_clinicians_task(settings, result, return_state=True)
    if alerted.is_completed():
        row = save_result(settings, _key(row) | {"alerted_at": utcnow()})
        return result_summary(row, reused=reused)
    why = f"not sent ({alerted.message}); kept, and the next run of this study sends it"
    get_run_logger().warning("alert for %s %s", row.study_instance_uid, why)
    result["alert"] = AlertReport(sent_at=None, owed=True, reason=why)
    return result


def _key(row: InferenceResult) -> dict[str, Any]:
    return {
        "study_instance_uid": row.study_instance_uid,
        "series_instance_uid": row.series_instance_uid,
        "model_name": row.model_name,
        "model_version": row.model_version,
    }
