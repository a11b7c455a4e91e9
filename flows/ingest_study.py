"""Flow `ingest_study`: files, a folder or a zip become verified HTJ2K instances in Orthanc.

collect inputs → batches of `ingest_batch` (parse, validate, transcode, verify, store, read
back, index; quarantine the bad) → one artifact table per study → a report → hand-offs: each
study's patient synced (`sync_patient`), MR studies of the head read by the AI
(`run_inference`). Batches retry on transient Orthanc failures; a run that still fails has
deleted nothing and can be re-run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NotRequired, TypedDict, cast

from prefect import State, flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Failed, Running
from prefect.task_runners import ThreadPoolTaskRunner

from common.db import ensure_schema
from common.logs import correlation
from common.settings import Settings
from flows import REPORTED
from flows.sync_patient import sync_patient
from tasks.archive.index import patients_of_studies
from tasks.inference.results import AiState, InferenceReport, InferenceStatus, set_ai_state
from tasks.ingest.limits import IngestLimits
from tasks.ingest.prefect_tasks import collect_inputs_task, ingest_batch_task
from tasks.ingest.prepare import FileReport
from tasks.ingest.report import (
    SeriesReport,
    StudyReport,
    count_statuses,
    publish_study_artifact,
    summarise_studies,
)
from tasks.ingest.workers import start_workers
from tasks.patients.sync import PatientSyncReport
from tasks.retry import network_retries


class IngestReport(TypedDict):
    """What `neuronova ingest --json` prints: every input, counts, the studies, the hand-offs."""

    files: list[FileReport]
    counts: dict[str, int]  # per IngestStatus value
    studies: list[StudyReport]
    patients: NotRequired[list[PatientSyncReport]]
    inference: NotRequired[list[InferenceReport]]


@flow(name="ingest_study", task_runner=ThreadPoolTaskRunner(max_workers=2), **REPORTED)  # type: ignore[arg-type]
def ingest_study(path: str, remove_originals: bool = False) -> IngestReport:
    """Ingest a file, folder or zip; return the per-file report with per-study summaries."""
    settings = Settings()
    logger = get_run_logger()
    start_workers(settings.ingest_processes)  # while the inputs are listed
    ensure_schema(settings.resolved_database_url)
    refs = collect_inputs_task(path, IngestLimits.from_settings(settings))
    logger.info("ingesting %d inputs in batches of %d", len(refs), settings.ingest_batch_size)
    batch_task = ingest_batch_task.with_options(**network_retries(settings.orthanc_retry_delays_s))
    futures = [
        batch_task.submit(
            settings, refs[start : start + settings.ingest_batch_size], remove_originals
        )
        for start in range(0, len(refs), settings.ingest_batch_size)
    ]
    outcomes = [outcome for future in futures for outcome in future.result()]
    studies = summarise_studies(outcomes)
    for study_uid, series_rows in studies.items():
        publish_study_artifact(study_uid, series_rows)
        with correlation(study_uid=study_uid):
            logger.info(
                "study stored: %d series, %d instances",
                len(series_rows),
                sum(r["instances"] for r in series_rows),
            )
    report = IngestReport(
        files=[o.public() for o in outcomes],
        counts=count_statuses(outcomes),
        studies=[StudyReport(study_instance_uid=uid, series=rows) for uid, rows in studies.items()],
    )
    logger.info("ingest finished: %s", report["counts"])
    # Hand-offs, as subflows (linked runs in the UI): the patient first, so that the AI's report
    # finds it in the cache; their failures are reported, the stored images stay stored.
    if settings.patient_sync_after_ingest:
        mrns = patients_of_studies(settings.resolved_database_url, studies)
        report["patients"] = [sync_study_patient(mrn) for mrn in mrns]
    if settings.inference_after_ingest:
        report["inference"] = [
            read_study(settings, uid, series) for uid, series in mr_series_of(studies).items()
        ]
    return report


def sync_study_patient(mrn: str) -> PatientSyncReport:
    """Resolve the study's patient (cache → FHIR → EMR) as a linked `sync_patient` run."""
    # Always in this process: a few HTTP calls, and a run on the cpu pool waiting for another
    # run on the same pool could wait forever once every slot held an ingest.
    state = sync_patient(mrn, return_state=True)
    return _hand_off_result(
        state,
        f"patient sync of {mrn}",
        f"neuronova patient {mrn}",
        PatientSyncReport(mrn=mrn, found=False, failed=True),
    )


def mr_series_of(studies: dict[str, list[SeriesReport]]) -> dict[str, list[str]]:
    """Each study's MR series in this ingest (stored or already there: a re-run of an ingest
    whose reading failed reads them again): the brain-lesion model chooses among them."""
    chosen = {
        uid: sorted(r["series_instance_uid"] for r in rows if r["modality"] == "MR")
        for uid, rows in studies.items()
    }
    return {uid: series for uid, series in chosen.items() if series}


def read_study(settings: Settings, study_uid: str, series_uids: list[str]) -> InferenceReport:
    """Hand a stored study's new series to `run_inference` (a subflow, linked in the UI)."""

    def in_process() -> State[Any]:
        from flows.run_inference import run_inference  # here: MONAI and torch cost seconds

        return run_inference(
            study_uid, require_brain=True, series_uids=series_uids, return_state=True
        )

    parameters = {"study_uid": study_uid, "require_brain": True, "series_uids": series_uids}
    set_ai_state(settings, study_uid, AiState.QUEUED)  # the worklist says so until it runs
    with correlation(study_uid=study_uid):
        state = _run_linked(settings, "run_inference/one-study", parameters, in_process)
    report = _hand_off_result(
        state,
        f"inference of {study_uid}",
        f"neuronova infer {study_uid}",
        InferenceReport(status=InferenceStatus.FAILED, study_instance_uid=study_uid),
    )
    if report["status"] == InferenceStatus.FAILED:  # never started, or its process died
        set_ai_state(settings, study_uid, AiState.FAILED)
    return report


def _run_linked(
    settings: Settings,
    deployment: str,
    parameters: dict[str, Any],
    in_process: Callable[[], State[Any]],
) -> State[Any]:
    """Run a hand-off as a linked run: through its deployment (on that deployment's work pool)
    when `NEURONOVA_HANDOFF=deployment`, else as a subflow in this process.

    A deployment that is not registered falls back to the subflow, with a warning: the study
    is still read, only not on the pool meant for it (run `make deploy`).
    """
    if settings.handoff != "deployment":
        return in_process()
    # The same hand-off of the same ingest run (a re-run after a crash) finds its run again.
    key = f"{flow_run.id}:{deployment}:{sorted(parameters.items())}"
    try:
        run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync in a sync flow
            deployment,
            parameters=parameters,
            timeout=settings.handoff_timeout_s,
            idempotency_key=key,
        )
    except ObjectNotFound:
        get_run_logger().warning(
            "deployment %s is not registered (`make deploy`); running it in this process",
            deployment,
        )
        return in_process()
    except Exception as err:  # the API failing must not fail an ingest whose images are stored
        return Failed(message=f"could not run {deployment}: {type(err).__name__}: {err}")
    if run.state is None or not run.state.is_final():
        now = run.state.name if run.state is not None else "unknown"
        return Running(
            message=f"flow run {run.name} ({run.id}) is {now} after "
            f"{settings.handoff_timeout_s:.0f} s; see the Prefect UI"
        )
    return run.state


def _hand_off_result[Report: (PatientSyncReport, InferenceReport)](
    state: State[Any], what: str, rerun: str, failed: Report
) -> Report:
    """A hand-off's report: what the other flow returned, or `failed` with the reason.

    Reported, never raised, since the images are safely stored and the hand-off can be re-run
    alone (`rerun`).
    """
    if state.is_completed():
        try:
            return cast(Report, state.result())
        except Exception as err:  # e.g. the result storage is not shared with that worker
            state = Failed(message=f"completed, but its report could not be read: {err}")
    if state.is_running():
        get_run_logger().warning("%s: %s", what, state.message)
        running = {"status": "running", "failed": False, "message": state.message or ""}
        return cast(Report, {**failed, **running})
    get_run_logger().error("%s failed (%s); re-run with `%s`", what, state.message, rerun)
    return cast(Report, {**failed, "message": state.message or ""})
