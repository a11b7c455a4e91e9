"""NeuroNova's deployments, as `deployments/prefect.yaml` describes them: the nightly HTJ2K check
over the whole archive, the scheduled patient sync from the EMR, and on-demand ingest,
per-study checks, per-study AI readings and per-patient syncs (trigger them from the Prefect UI
or the CLI).

Three ways to run them, all from that one file:
- `neuronova serve` (`build_deployments`): one long-lived process serves them all, no work pool;
  the simplest for one machine.
- `neuronova deploy` / `make deploy` (`deployments/work_pools.py`): registered on the work pools
  `cpu` and `gpu`, for Prefect workers to pick up (inference on `gpu`, the rest on `cpu`).
- `prefect deploy --all --prefect-file deployments/prefect.yaml`: Prefect's CLI, as it is.

The two scheduled deployments take their cron from the settings when those are set
(`NEURONOVA_HTJ2K_CHECK_CRON`, `NEURONOVA_PATIENT_SYNC_CRON`), else from the file.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Schedule

from common.errors import ConfigError
from common.settings import Settings

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")

# (flow function, deployment name) → the setting that overrides the file's cron.
CRON_SETTINGS: dict[tuple[str, str], str] = {
    ("check_htj2k", "archive-nightly"): "htj2k_check_cron",
    ("sync_patients", "emr-scheduled"): "patient_sync_cron",
}


@dataclass(frozen=True)
class DeploymentSpec:
    entrypoint: str  # path:function, relative to the project root
    name: str
    description: str
    tags: tuple[str, ...]
    pool: str  # the work pool when deployed to workers
    cron: str | None = None  # the file's schedule (UTC)

    def schedules_for(self, settings: Settings) -> list[Schedule]:
        """The deployment's schedule (none or one), in the hospital's time zone
        (NEURONOVA_SCHEDULE_TIMEZONE): "02:30" is then 02:30 where the hospital is."""
        cron = self.cron_for(settings)
        return [Cron(cron, timezone=settings.schedule_timezone)] if cron else []

    def cron_for(self, settings: Settings) -> str | None:
        """The schedule to register: the setting that overrides this one when set, else the
        file's."""
        field = CRON_SETTINGS.get((self.entrypoint.split(":")[1], self.name))
        override: str | None = getattr(settings, field) if field else None
        return override or self.cron


def read_deployments(path: Path = PREFECT_YAML) -> tuple[DeploymentSpec, ...]:
    """The deployments of a prefect.yaml; a clear error for a shape we do not register."""
    try:
        document = yaml.safe_load(path.read_text())
        specs = tuple(_spec(entry) for entry in document["deployments"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the deployments ({err}); fix the file") from err
    return specs


def _spec(entry: dict[str, Any]) -> DeploymentSpec:
    schedules = entry.get("schedules") or []
    if len(schedules) > 1 or any(s.get("timezone", "UTC") != "UTC" for s in schedules):
        raise ValueError(f"{entry['name']}: one cron schedule in UTC at most")
    return DeploymentSpec(
        entrypoint=entry["entrypoint"],
        name=entry["name"],
        description=entry.get("description", ""),
        tags=tuple(entry.get("tags") or ()),
        pool=entry["work_pool"]["name"],
        cron=schedules[0]["cron"] if schedules else None,
    )


DEPLOYMENTS: tuple[DeploymentSpec, ...] = read_deployments()


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """The flow object an entrypoint names (`flows/x.py:f` → `flows.x.f`)."""
    path, function = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    found = getattr(module, function)
    if not isinstance(found, Flow):
        raise TypeError(f"{entrypoint} is not a Prefect flow")
    return found


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments for `neuronova serve`: the file's schedules, or the settings that override
    them."""
    built = []
    for spec in DEPLOYMENTS:
        built.append(
            load_flow(spec.entrypoint).to_deployment(
                name=spec.name,
                schedules=spec.schedules_for(settings),
                description=spec.description,
                tags=list(spec.tags),
            )
        )
    # `to_deployment` is async-dispatched; called from sync code it returns the deployment.
    return [d for d in built if isinstance(d, RunnerDeployment)]
