"""`neuronova deploy` / `make deploy`: the work pools and the deployments on them, registered on
a running Prefect server, for Prefect workers (`prefect worker start --pool cpu|gpu`).

- `cpu` (process): ingest, HTJ2K checks, patient sync. Add workers to add throughput.
- `gpu` (process): inference, its concurrency limited to the GPUs there are
  (`NEURONOVA_GPU_POOL_CONCURRENCY`, one run per GPU), so two readings never share one card.

The deployments load their code from the project folder the worker runs in (a
`set_working_directory` pull step): a worker is started from a checkout or the image, never
from a copy of the code sent with the run. Registering again updates in place.
"""

from __future__ import annotations

import logging
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists

from common.settings import PROJECT_ROOT, Settings
from deployments.crashed_runs import ensure_crashed_runs_automation
from deployments.schedules import DEPLOYMENTS, load_flow

log = logging.getLogger(__name__)

POOL_TYPE = "process"


def pool_limits(settings: Settings) -> dict[str, int | None]:
    """Each work pool and its concurrency limit (None: as many as workers take)."""
    return {"cpu": None, "gpu": settings.gpu_pool_concurrency}


def ensure_work_pools(settings: Settings) -> None:
    """Create the pools, or bring their limits in line with the settings."""
    with get_client(sync_client=True) as client:
        for name, limit in pool_limits(settings).items():
            try:
                client.create_work_pool(
                    WorkPoolCreate(name=name, type=POOL_TYPE, concurrency_limit=limit)
                )
                log.info("work pool %s created (limit %s)", name, limit)
            except ObjectAlreadyExists:
                client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))


def register_deployments(settings: Settings) -> dict[str, UUID]:
    """Every deployment on its pool, and the automation that crashes runs whose process died
    (deployments/crashed_runs.py); returns `flow/name` → deployment id."""
    ensure_work_pools(settings)
    ensure_crashed_runs_automation(settings)
    registered = {}
    for spec in DEPLOYMENTS:
        flow = load_flow(spec.entrypoint)
        source = flow.from_source(source=str(PROJECT_ROOT), entrypoint=spec.entrypoint)
        # to_deployment + apply rather than deploy(): no image to build, nothing printed.
        deployment = source.to_deployment(  # type: ignore[union-attr]
            name=spec.name,
            work_pool_name=spec.pool,
            schedules=spec.schedules_for(settings),
            description=spec.description,
            tags=list(spec.tags),
        )
        deployment_id = deployment.apply()  # type: ignore[union-attr]  # sync here
        registered[f"{flow.name}/{spec.name}"] = UUID(str(deployment_id))
    return registered
