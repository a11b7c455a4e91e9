"""The Prefect tasks of the archive's HTJ2K check, which the `check_htj2k` flow sequences, and
the report it publishes. Each talks to Orthanc and so carries the network retry policy."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from common.errors import PermanentUpstreamError
from common.settings import Settings
from tasks.archive.check import CheckOutcome, check_study
from tasks.archive.orthanc import OrthancClient
from tasks.archive.replace import recover_backups
from tasks.retry import network_retries


@task(name="recover_backups", **network_retries())
def recover_backups_task(settings: Settings, interrupted_study: str | None = None) -> int:
    """Re-store originals whose replacement was interrupted (`interrupted_study`'s at once)."""
    with OrthancClient.from_settings(settings) as client:
        return recover_backups(client, settings.backup_dir, interrupted_study=interrupted_study)


@task(name="find_studies", **network_retries())
def find_studies_task(settings: Settings, study_instance_uid: str | None) -> list[str]:
    """Orthanc IDs of the study asked for, or of every study."""
    with OrthancClient.from_settings(settings) as client:
        if study_instance_uid is None:
            return list(client.iter_study_ids())
        study_ids = client.lookup_all(study_instance_uid, "Study")
        if not study_ids:
            raise PermanentUpstreamError(f"study {study_instance_uid} is not in Orthanc")
        return study_ids


@task(name="check_study", **network_retries())
def check_study_task(settings: Settings, study_id: str) -> list[CheckOutcome]:
    """Bring one study to verified HTJ2K lossless."""
    with OrthancClient.from_settings(settings) as client:
        return check_study(settings, client, study_id)


def publish_check_report(per_study: dict[str, list[CheckOutcome]], restored: int) -> None:
    """One table artifact: per study, how many instances and what became of them."""
    rows = [_study_row(study_id, outcomes) for study_id, outcomes in per_study.items()]
    create_table_artifact(
        key="htj2k-check",
        table=rows or [{"study": "(none)", "instances": 0}],
        description=f"HTJ2K check of {len(rows)} studies; {restored} originals restored.",
    )


def _study_row(study_id: str, outcomes: list[CheckOutcome]) -> dict[str, Any]:
    counts = Counter(o.status.value for o in outcomes)
    return {"orthanc_study": study_id, "instances": len(outcomes), **dict(counts)}
