"""The deployments `neuronova serve` runs: the nightly HTJ2K check over the whole archive, the
scheduled patient sync from the EMR, and on-demand ingest, per-study checks, per-study AI
readings and per-patient syncs (trigger them from the Prefect UI or the CLI).

Served by a long-lived `neuronova serve` process (Prefect's `serve`), which needs no work
pool; the operations work (work pools `cpu`/`gpu`, Docker/Kubernetes) builds on these.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment

from common.settings import Settings
from flows.check_htj2k import check_htj2k
from flows.ingest_study import ingest_study
from flows.run_inference import run_inference
from flows.sync_patient import sync_patient
from flows.sync_patients import sync_patients


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments, with the schedule taken from settings."""
    built = [
        check_htj2k.to_deployment(
            name="archive-nightly",
            cron=settings.htj2k_check_cron,
            description="Find instances that are not HTJ2K lossless; transcode, verify, replace.",
            tags=["htj2k", "scheduled"],
        ),
        check_htj2k.to_deployment(
            name="one-study",
            description="Check one study (parameter study_instance_uid), e.g. after a C-STORE.",
            tags=["htj2k"],
        ),
        ingest_study.to_deployment(
            name="on-demand",
            description="Ingest a file, folder or zip visible to the server (parameter path).",
            tags=["ingest"],
        ),
        sync_patients.to_deployment(
            name="emr-scheduled",
            cron=settings.patient_sync_cron,
            description="Bulk sync OpenEMR → FHIR → cache (parameter since: OpenEMR date).",
            tags=["patients", "scheduled"],
        ),
        run_inference.to_deployment(
            name="one-study",
            description="The brain-lesion model on one study (parameter study_uid): SEG, FHIR.",
            tags=["inference"],
        ),
        sync_patient.to_deployment(
            name="one-patient",
            description="Resolve one MRN: cache, FHIR, OpenEMR, with write-backs (parameter mrn).",
            tags=["patients"],
        ),
    ]
    # `to_deployment` is async-dispatched; called from sync code it returns the deployment.
    return [d for d in built if isinstance(d, RunnerDeployment)]
