"""Flow `run_inference(study_uid)`: the brain-lesion model's reading of one study.

choose the MR series → read it from Orthanc (HTJ2K decoded into one volume) → segment (GPU when
there is one; out of memory → smaller windows → the CPU) → DICOM SEG kept under results/ and
stored through ingest (verified, indexed, so the viewer may open it) → the patient resolved
(cache → FHIR → EMR) → Observations and a DiagnosticReport in FHIR → the result row → artifacts
(a table and the overlay PNG of the slice with the largest lesion area) → an alert to the
clinicians who may open the study (Redis → the webapp's alert streams).

Idempotent per (study, model, version): a completed result is returned as it stands; one whose
FHIR part is owed (FHIR down, patient not yet known) gets only that part on the next run. A
study with nothing to read ends with a message, not a failure.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from common.db import InferenceResult, ensure_schema
from common.logs import correlation
from common.settings import Settings
from flows import REPORTED
from flows.sync_patient import resolve_patient_task
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.seg import build_lesion_seg
from tasks.dicom.volume import Volume, read_series_from_orthanc
from tasks.inference.alerts import AI_RESULT, AlertPublisher, ai_result_facts
from tasks.inference.lesions import measure_lesions, overlay_png
from tasks.inference.report import publish_lesion_results
from tasks.inference.results import find_result, save_result, seg_uids, store_seg
from tasks.inference.segmentation import (
    SegmentationRun,
    bundle_identity,
    cached_bundle,
    segment_volume,
)
from tasks.inference.series import NoSuitableSeries, SeriesChoice, choose_series, find_study_series
from tasks.patients.fhir import FhirClient
from tasks.retry import RETRY_JITTER_FACTOR, retry_if_transient

_NETWORK_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_jitter_factor": RETRY_JITTER_FACTOR,
    "retry_condition_fn": retry_if_transient,
}


@task(**_NETWORK_RETRIES)
def choose_series_task(study_uid: str, require_brain: bool) -> tuple[dict[str, Any], SeriesChoice]:
    """The study's tags and the MR series the model will read."""
    settings = Settings()
    with OrthancClient.from_settings(settings) as client:
        study_tags, series = find_study_series(client, study_uid)
    choice = choose_series(
        study_tags, series, min_slices=settings.inference_min_slices, require_brain=require_brain
    )
    return study_tags, choice


@task(**_NETWORK_RETRIES, cache_policy=NO_CACHE)
def read_volume_task(series_id: str) -> Volume:
    """The series as one volume, with the headers the SEG must reference."""
    with OrthancClient.from_settings(Settings()) as client:
        return read_series_from_orthanc(client, series_id, with_headers=True)


@task(cache_policy=NO_CACHE)
def segment_task(volume: Volume) -> SegmentationRun:
    """The lesion mask on the series' own grid (the bundle is loaded once per process)."""
    settings = Settings()
    bundle = cached_bundle(settings.model_bundle_dir, settings.inference_device)
    return segment_volume(bundle, volume)


@task(**_NETWORK_RETRIES, cache_policy=NO_CACHE)
def store_seg_task(volume: Volume, mask: Any, study_uid: str, model: str, version: str) -> str:
    """Build the SEG (UIDs derived from study and model version) and store it verified."""
    series_uid, sop_uid = seg_uids(study_uid, model, version)
    seg = build_lesion_seg(
        volume.headers, mask, algorithm_name=model, algorithm_version=version,
        series_instance_uid=series_uid, sop_instance_uid=sop_uid,
    )  # fmt: skip
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return str(store_seg(Settings(), buffer.getvalue(), study_uid, sop_uid))


@task(**_NETWORK_RETRIES)
def publish_fhir_task(
    patient_fhir_id: str, study_uid: str, model: str, version: str, count: int, volume_ml: float
) -> tuple[str, list[str]]:
    """Observations and the DiagnosticReport, each created once (conditional creates)."""
    with FhirClient.from_settings(Settings()) as fhir:
        return publish_lesion_results(
            fhir, patient_ref=f"Patient/{patient_fhir_id}", study_uid=study_uid, model=model,
            version=version, lesion_count=count, volume_ml=volume_ml,
        )  # fmt: skip


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=retry_if_transient)
def alert_clinicians_task(result: dict[str, Any]) -> int:
    """Tell the clinicians who may open the study (their alert streams filter by policy)."""
    settings = Settings()
    if not settings.redis_url:
        return 0
    with AlertPublisher(settings.redis_url, settings.alerts_channel) as publisher:
        return publisher.publish(
            AI_RESULT, result["study_instance_uid"], result["patient_id"], ai_result_facts(result)
        )


@flow(name="run_inference", log_prints=True, **REPORTED)
def run_inference(study_uid: str, require_brain: bool = False) -> dict[str, Any]:
    """Segment one study's brain MR and publish the result; see the module's docstring.

    `require_brain`: only read a series that a tag places in the head (ingest's trigger).
    """
    with correlation(study_uid=study_uid):  # on every log line of this run (common.logs)
        return _read_study(study_uid, require_brain)


def _read_study(study_uid: str, require_brain: bool) -> dict[str, Any]:
    settings = Settings()
    logger = get_run_logger()
    ensure_schema(settings.resolved_database_url)
    model, version = bundle_identity(settings.model_bundle_dir)
    existing = find_result(settings, study_uid, model, version)
    if existing is not None and existing.status == "completed":
        logger.info("study already read by %s %s: nothing to do", model, version)
        return summary(existing, reused=True)

    if existing is None:
        try:
            study_tags, choice = choose_series_task(study_uid, require_brain)
        except NoSuitableSeries as err:
            logger.warning("no inference for study %s: %s", study_uid, err)
            return {"status": "no-suitable-series", "study_instance_uid": study_uid,
                    "message": str(err)}  # fmt: skip
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
    volume = read_volume_task(choice.orthanc_id)
    read_s = time.perf_counter() - started
    logger.info("read %s: %s voxels at %s mm in %.2f s", choice.description or choice.series_uid,
                "x".join(map(str, volume.pixels.shape)), volume.spacing, read_s)  # fmt: skip
    started = time.perf_counter()
    run = segment_task(volume)
    segment_s = time.perf_counter() - started
    measured = measure_lesions(run.mask, volume.spacing)
    logger.info("segmented on %s in %.2f s: %d lesion(s), %.2f mL (%s)", run.device, segment_s,
                measured.count, measured.volume_ml, "; ".join(run.attempts))  # fmt: skip
    started = time.perf_counter()
    store_seg_task(volume, run.mask, study_uid, model, version)
    seg_s = time.perf_counter() - started
    seg_series, seg_sop = seg_uids(study_uid, model, version)
    row = save_result(settings, {
        "study_instance_uid": study_uid, "series_instance_uid": choice.series_uid,
        "patient_id": str(study_tags.get("PatientID", "")), "model_name": model,
        "model_version": version, "model_sha256": run.model_sha256, "status": "segmented",
        "device": run.device, "lesion_count": measured.count,
        "lesion_volume_ml": round(measured.volume_ml, 3), "seg_series_uid": seg_series,
        "seg_sop_instance_uid": seg_sop,
        "timings": {"read_s": round(read_s, 3), "segment_s": round(segment_s, 3),
                    "seg_store_s": round(seg_s, 3)},
    })  # fmt: skip
    _publish_overlay(settings, study_uid, volume, run, measured.largest_slice, row)
    return row


def _publish_to_fhir(settings: Settings, row: InferenceResult) -> dict[str, Any]:
    """The FHIR part: patient, Observations, report; owed (not failed) when it cannot be paid."""
    logger = get_run_logger()
    started = time.perf_counter()
    patient = resolve_patient_task(row.patient_id)
    if not patient["found"] or not patient["fhir_id"]:
        why = (
            f"patient {row.patient_id} is not known to the EMR"
            if not patient["found"]
            else "the FHIR server is unreachable; the patient's write-back is owed"
        )
        logger.warning("FHIR report not written: %s. Re-run once that is fixed.", why)
        row = save_result(settings, _key(row) | {"note": why[:512]})
        return summary(row, reused=False)
    report_id, _observations = publish_fhir_task(
        patient["fhir_id"], row.study_instance_uid, row.model_name, row.model_version,
        row.lesion_count, row.lesion_volume_ml,
    )  # fmt: skip
    row = save_result(settings, _key(row) | {
        "status": "completed", "fhir_report_id": report_id, "fhir_patient_id": patient["fhir_id"],
        "note": None, "timings": {"fhir_s": round(time.perf_counter() - started, 3)},
    })  # fmt: skip
    publish_result_table(row)
    logger.info("DiagnosticReport/%s for Patient/%s", report_id, patient["fhir_id"])
    result = summary(row, reused=False)
    # The result is stored everywhere already: a failed alert is logged, not a failed run.
    alerted = alert_clinicians_task(result, return_state=True)
    if not alerted.is_completed():
        logger.warning("no alert sent for %s: %s", row.study_instance_uid, alerted.message)
    return result


def _key(row: InferenceResult) -> dict[str, Any]:
    return {"study_instance_uid": row.study_instance_uid, "model_name": row.model_name,
            "model_version": row.model_version}  # fmt: skip


def summary(row: InferenceResult, *, reused: bool) -> dict[str, Any]:
    """What the flow returns and `neuronova infer --json` prints."""
    return {
        "status": row.status,
        "reused": reused,
        "study_instance_uid": row.study_instance_uid,
        "series_instance_uid": row.series_instance_uid,
        "patient_id": row.patient_id,
        "model": {"name": row.model_name, "version": row.model_version, "sha256": row.model_sha256},
        "device": row.device,
        "lesion_count": row.lesion_count,
        "lesion_volume_ml": row.lesion_volume_ml,
        "seg": {
            "series_instance_uid": row.seg_series_uid,
            "sop_instance_uid": row.seg_sop_instance_uid,
        },
        "fhir": {
            "report": f"DiagnosticReport/{row.fhir_report_id}" if row.fhir_report_id else None,
            "patient": f"Patient/{row.fhir_patient_id}" if row.fhir_patient_id else None,
        },
        "note": row.note,
        "timings": json.loads(row.timings),
    }


def _artifact_key(prefix: str, study_uid: str) -> str:
    return f"{prefix}-{study_uid.replace('.', '-')}"[:100]


def publish_result_table(row: InferenceResult) -> None:
    """The result as a table artifact, keyed by study so the UI shows its history."""
    facts = summary(row, reused=False)
    table: list[dict[str, Any]] = [
        {"field": "model", "value": f"{row.model_name} {row.model_version}"},
        {"field": "model sha256", "value": row.model_sha256[:16] + "…"},
        {"field": "device", "value": row.device},
        {"field": "series read", "value": row.series_instance_uid},
        {"field": "lesions", "value": row.lesion_count},
        {"field": "total volume (mL)", "value": row.lesion_volume_ml},
        {"field": "SEG", "value": row.seg_sop_instance_uid},
        {"field": "FHIR report", "value": facts["fhir"]["report"] or "owed"},
        *({"field": f"time {k}", "value": v} for k, v in facts["timings"].items()),
    ]
    create_table_artifact(
        key=_artifact_key("inference", row.study_instance_uid),
        table=table,
        description=f"AI brain-lesion result for `{row.study_instance_uid}` "
        "(AI generated, not for clinical use).",
    )


def _publish_overlay(
    settings: Settings,
    study_uid: str,
    volume: Volume,
    run: SegmentationRun,
    largest_slice: int | None,
    row: InferenceResult,
) -> None:
    """The slice with the largest lesion area, overlay drawn: kept as a file, shown in the UI."""
    index = largest_slice if largest_slice is not None else volume.pixels.shape[0] // 2
    png = overlay_png(volume.pixels[index], run.mask[index])
    path = settings.results_dir / study_uid / f"overlay-{row.seg_sop_instance_uid}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    encoded = base64.b64encode(png).decode("ascii")
    create_markdown_artifact(
        key=_artifact_key("inference-overlay", study_uid),
        markdown=(
            f"### AI lesions, slice {index + 1} of {volume.pixels.shape[0]}\n\n"
            f"![the AI's lesions in red](data:image/png;base64,{encoded})\n\n"
            f"{row.lesion_count} lesion(s), {row.lesion_volume_ml:.2f} mL; "
            f"model {row.model_name} {row.model_version} on {row.device}. "
            f"AI generated, not for clinical use. File: `{path}`"
        ),
        description=f"Overlay for study `{study_uid}`",
    )
