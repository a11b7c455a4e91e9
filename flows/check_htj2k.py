"""Flow `check_htj2k`: make sure every instance in Orthanc is verified HTJ2K lossless.

For one study (after a C-STORE, say) or the whole archive on a schedule: restore any original
left behind by an interrupted replacement, then one `check_study` task per study (transcode,
verify, swap in place, index), and a report artifact of what was found and done.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from common.db import ensure_schema
from common.errors import PermanentUpstreamError
from common.settings import Settings
from tasks.archive.check import CheckOutcome, check_study
from tasks.archive.orthanc import OrthancClient
from tasks.archive.replace import recover_backups
from tasks.retry import RETRY_JITTER_FACTOR, retry_if_transient
from tasks.runners import task_runner

_NETWORK_TASK = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_jitter_factor": RETRY_JITTER_FACTOR,
    "retry_condition_fn": retry_if_transient,
}


@task(name="recover_backups", **_NETWORK_TASK)  # type: ignore[call-overload]
def recover_backups_task() -> int:
    """Re-store originals whose replacement was interrupted."""
    settings = Settings()
    with OrthancClient.from_settings(settings) as client:
        return recover_backups(client, settings.backup_dir)


@task(name="find_studies", **_NETWORK_TASK)  # type: ignore[call-overload]
def find_studies_task(study_instance_uid: str | None) -> list[str]:
    """Orthanc IDs of the study asked for, or of every study."""
    settings = Settings()
    with OrthancClient.from_settings(settings) as client:
        if study_instance_uid is None:
            return list(client.iter_study_ids())
        study_id = client.lookup(study_instance_uid, "Study")
        if study_id is None:
            raise PermanentUpstreamError(f"study {study_instance_uid} is not in Orthanc")
        return [study_id]


@task(name="check_study", **_NETWORK_TASK)  # type: ignore[call-overload]
def check_study_task(study_id: str) -> list[CheckOutcome]:
    """Bring one study to verified HTJ2K lossless."""
    settings = Settings()
    with OrthancClient.from_settings(settings) as client:
        return check_study(settings, client, study_id)


@flow(name="check_htj2k", task_runner=task_runner(Settings()))
def check_htj2k(study_instance_uid: str | None = None) -> dict[str, Any]:
    """Check one study, or the whole archive when no UID is given; return the report."""
    settings = Settings()
    logger = get_run_logger()
    ensure_schema(settings.resolved_database_url)
    restored = recover_backups_task()
    study_ids = find_studies_task(study_instance_uid)
    futures = {sid: check_study_task.submit(sid) for sid in study_ids}
    per_study = {sid: future.result() for sid, future in futures.items()}
    counts = Counter(o.status for outcomes in per_study.values() for o in outcomes)
    rows = [_study_row(sid, outcomes) for sid, outcomes in per_study.items()]
    create_table_artifact(
        key="htj2k-check",
        table=rows or [{"study": "(none)", "instances": 0}],
        description=f"HTJ2K check of {len(rows)} studies; {restored} originals restored.",
    )
    logger.info("HTJ2K check: %s", dict(counts))
    return {
        "counts": dict(counts),
        "restored_from_backup": restored,
        "instances": [o.as_dict() for outcomes in per_study.values() for o in outcomes],
    }


def _study_row(study_id: str, outcomes: list[CheckOutcome]) -> dict[str, Any]:
    counts = Counter(o.status for o in outcomes)
    return {"orthanc_study": study_id, "instances": len(outcomes), **dict(counts)}
