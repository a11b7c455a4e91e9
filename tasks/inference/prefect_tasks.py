"""The Prefect tasks of AI inference, which the `run_inference` flow sequences.

Those that talk to Orthanc, FHIR or Redis carry the network retry policy. Those that take or
return a volume do not hash their inputs (`NO_CACHE`): hashing a few hundred MB of voxels would
cost more than the task.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from common.settings import Settings
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.seg import build_lesion_seg, check_written_seg
from tasks.dicom.sr import ModelIdentity, build_measurement_report, check_written_report
from tasks.dicom.volume import Volume, read_series_from_orthanc
from tasks.inference.alerts import AI_RESULT, AlertPublisher, ai_result_facts
from tasks.inference.lesions import Lesion
from tasks.inference.report import LesionFindings, PublishedReport, publish_lesion_results
from tasks.inference.results import lesion_tracking_uids, seg_uids, sr_uids, store_seg
from tasks.inference.segmentation import SegmentationRun, cached_bundle, segment_volume
from tasks.inference.series import SeriesChoice, choose_series, find_study_series, only_series
from tasks.patients.fhir import FhirClient
from tasks.retry import NUDGE_DELAYS_S, network_retries


@task(name="choose_series", **network_retries())
def choose_series_task(
    settings: Settings, study_uid: str, require_brain: bool, series_uids: list[str] | None = None
) -> tuple[dict[str, Any], SeriesChoice]:
    """The study's tags and the MR series the model will read (among `series_uids` if given)."""
    with OrthancClient.from_settings(settings) as client:
        study_tags, series = find_study_series(client, study_uid)
    if series_uids is not None:
        series = only_series(series, series_uids)
    choice = choose_series(
        study_tags, series, min_slices=settings.inference_min_slices, require_brain=require_brain
    )
    return study_tags, choice


@task(name="read_volume", **network_retries(), cache_policy=NO_CACHE)
def read_volume_task(settings: Settings, series_id: str) -> Volume:
    """The series as one volume, with the headers the SEG must reference."""
    with OrthancClient.from_settings(settings) as client:
        return read_series_from_orthanc(client, series_id, with_headers=True)


@task(name="segment_volume", cache_policy=NO_CACHE)
def segment_task(settings: Settings, volume: Volume) -> SegmentationRun:
    """The lesion mask on the series' own grid (the bundle is loaded once per process)."""
    bundle = cached_bundle(settings.model_bundle_dir, settings.inference_device)
    return segment_volume(bundle, volume)


@task(name="store_seg", **network_retries(), cache_policy=NO_CACHE)
def store_seg_task(
    settings: Settings,
    volume: Volume,
    labels: Any,
    study_uid: str,
    source_series_uid: str,
    model: str,
    version: str,
    bundle_sha256: str,
    lesions: list[Lesion],
) -> None:
    """Build the SEG, a segment per lesion (`labels` and `lesions` as label_lesions found
    them), and beside it the TID 1500 SR (a group per lesion on its segment), UIDs derived
    from the series read and the model version; check that each reads back as written and
    store each, verified, while the next is built."""
    series_uid, sop_uid = seg_uids(study_uid, source_series_uid, model, version)
    tracking = lesion_tracking_uids(study_uid, source_series_uid, model, version, len(lesions))
    seg = build_lesion_seg(
        volume.headers,
        labels,
        algorithm_name=model,
        algorithm_version=version,
        tracking_uids=tracking,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
    )
    # Every object we write reads back as what we meant before it enters the PACS.
    seg_bytes = _encoded(seg)
    check_written_seg(seg_bytes, tracking)
    # Each store waits on Orthanc (its read-back, the index) while the rest is built.
    with ThreadPoolExecutor(2, thread_name_prefix="store-results") as pool:
        seg_stored = pool.submit(store_seg, settings, seg_bytes, study_uid, sop_uid)
        sr_series, sr_sop = sr_uids(study_uid, source_series_uid, model, version)
        sr = build_measurement_report(
            volume.headers,
            seg,
            labels,
            lesions,
            tracking,
            ModelIdentity(model, version, bundle_sha256),
            series_instance_uid=sr_series,
            sop_instance_uid=sr_sop,
        )
        sr_bytes = _encoded(sr)
        check_written_report(sr_bytes, tracking, sop_uid)
        sr_stored = pool.submit(store_seg, settings, sr_bytes, study_uid, sr_sop, "SR")
        seg_stored.result()  # either failing fails the task: its retry stores both again
        sr_stored.result()


def _encoded(dataset: Any) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@task(name="publish_fhir_report", **network_retries())
def publish_fhir_task(
    settings: Settings, findings: LesionFindings, bundle_sha256: str
) -> PublishedReport:
    """The Device, the Observations (count, total, one per lesion) and the DiagnosticReport,
    each created once (conditional creates)."""
    with FhirClient.from_settings(settings) as fhir:
        return publish_lesion_results(fhir, findings, bundle_sha256)


@task(name="alert_clinicians", **network_retries(NUDGE_DELAYS_S))
def alert_clinicians_task(settings: Settings, result: dict[str, Any]) -> int:
    """Tell the clinicians who may open the study (their alert streams filter by policy)."""
    if not settings.resolved_redis_url:
        return 0
    with AlertPublisher.from_settings(settings) as publisher:
        return publisher.publish(
            AI_RESULT, result["study_instance_uid"], result["patient_id"], ai_result_facts(result)
        )
