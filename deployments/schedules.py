"""NeuroNova's deployments, described once: the nightly HTJ2K check over the whole archive, the
scheduled patient sync from the EMR, and on-demand ingest, per-study checks, per-study AI
readings and per-patient syncs (trigger them from the Prefect UI or the CLI).

Two ways to run them:
- `neuronova serve` (`build_deployments`): one long-lived process serves them all, no work pool;
  the simplest for one machine.
- `neuronova deploy` / `make deploy` (`deployments/work_pools.py`): registered on the work pools
  `cpu` and `gpu`, for Prefect workers to pick up (inference on `gpu`, the rest on `cpu`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment

from common.settings import Settings


@dataclass(frozen=True)
class DeploymentSpec:
    entrypoint: str  # path:function, relative to the project root
    name: str
    description: str
    tags: tuple[str, ...]
    pool: str  # the work pool when deployed to workers
    cron: Callable[[Settings], str] | None = None


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "flows/check_htj2k.py:check_htj2k", "archive-nightly",
        "Find instances that are not HTJ2K lossless; transcode, verify, replace.",
        ("htj2k", "scheduled"), "cpu", cron=lambda s: s.htj2k_check_cron,
    ),
    DeploymentSpec(
        "flows/check_htj2k.py:check_htj2k", "one-study",
        "Check one study (parameter study_instance_uid), e.g. after a C-STORE.", ("htj2k",), "cpu",
    ),
    DeploymentSpec(
        "flows/ingest_study.py:ingest_study", "on-demand",
        "Ingest a file, folder or zip visible to the worker (parameter path).", ("ingest",), "cpu",
    ),
    DeploymentSpec(
        "flows/run_inference.py:run_inference", "one-study",
        "The brain-lesion model on one study (parameter study_uid): SEG, FHIR.", ("inference",),
        "gpu",
    ),
    DeploymentSpec(
        "flows/sync_patients.py:sync_patients", "emr-scheduled",
        "Bulk sync OpenEMR → FHIR → cache (parameter since: OpenEMR date).",
        ("patients", "scheduled"), "cpu", cron=lambda s: s.patient_sync_cron,
    ),
    DeploymentSpec(
        "flows/sync_patient.py:sync_patient", "one-patient",
        "Resolve one MRN: cache, FHIR, OpenEMR, with write-backs (parameter mrn).",
        ("patients",), "cpu",
    ),
)  # fmt: skip


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """The flow object an entrypoint names (`flows/x.py:f` → `flows.x.f`)."""
    path, function = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    found = getattr(module, function)
    if not isinstance(found, Flow):
        raise TypeError(f"{entrypoint} is not a Prefect flow")
    return found


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments for `neuronova serve`, with the schedules taken from settings."""
    built = []
    for spec in DEPLOYMENTS:
        cron = spec.cron(settings) if spec.cron else None
        built.append(
            load_flow(spec.entrypoint).to_deployment(
                name=spec.name, cron=cron, description=spec.description, tags=list(spec.tags)
            )
        )
    # `to_deployment` is async-dispatched; called from sync code it returns the deployment.
    return [d for d in built if isinstance(d, RunnerDeployment)]
