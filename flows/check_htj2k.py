"""Flow `check_htj2k`: make sure every instance in Orthanc is verified HTJ2K lossless.

For one study (after a C-STORE, say) or the whole archive on a schedule: restore any original
left behind by an interrupted replacement, then one `check_study` task per study (transcode,
verify, swap in place, index), and a report artifact of what was found and done. The studies
fan out over the task runner that `NEURONOVA_TASK_RUNNER` names (`tasks/runners.py`).
"""

from __future__ import annotations

from collections import Counter
from typing import TypedDict

from prefect import flow, get_run_logger

from common.db import ensure_schema
from common.settings import Settings
from tasks.archive.check import CheckInstanceReport
from tasks.archive.prefect_tasks import (
    check_study_task,
    find_studies_task,
    publish_check_report,
    recover_backups_task,
)
from tasks.runners import ConfiguredTaskRunner


class CheckReport(TypedDict):
    """What `neuronova check-htj2k --json` prints."""

    counts: dict[str, int]  # per CheckStatus value
    restored_from_backup: int
    instances: list[CheckInstanceReport]


@flow(name="check_htj2k", task_runner=ConfiguredTaskRunner())  # type: ignore[arg-type]
def check_htj2k(study_instance_uid: str | None = None) -> CheckReport:
    """Check one study, or the whole archive when no UID is given; return the report."""
    settings = Settings()
    logger = get_run_logger()
    ensure_schema(settings.resolved_database_url)
    restored = recover_backups_task(settings)
    study_ids = find_studies_task(settings, study_instance_uid)
    futures = {sid: check_study_task.submit(settings, sid) for sid in study_ids}
    per_study = {sid: future.result() for sid, future in futures.items()}
    counts = Counter(o.status.value for outcomes in per_study.values() for o in outcomes)
    publish_check_report(per_study, restored)
    logger.info("HTJ2K check: %s", dict(counts))
    return CheckReport(
        counts=dict(counts),
        restored_from_backup=restored,
        instances=[o.as_dict() for outcomes in per_study.values() for o in outcomes],
    )
