"""The Prefect tasks of patient sync, which `sync_patient` and `sync_patients` sequence, and the
bulk sync's report.

Each talks to FHIR, OpenEMR or both, and carries the network retry policy; a 412 (several FHIR
Patients for one MRN) is not transient, so it is not retried: the MRN is flagged for a merge.
Every step is idempotent per MRN, so a retried task converges.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from common.errors import NeuroNovaError, TransientUpstreamError
from common.settings import Settings
from tasks.patients import cache as patient_cache
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient
from tasks.patients.sync import (
    PatientSyncReport,
    SyncOutcome,
    look_up_patient,
    resolve_patient,
    sync_emr_record,
)
from tasks.retry import QUICK_DELAYS_S, network_retries

# Patients of one page synced at once: each waits on FHIR and the database, not on the CPU.
PAGE_THREADS = 4


@task(name="resolve_patient", **network_retries(QUICK_DELAYS_S))
def resolve_patient_task(settings: Settings, mrn: str) -> PatientSyncReport:
    """Resolve one MRN (cache → FHIR → OpenEMR, with write-backs); where it was found."""
    return look_up_patient(settings, mrn).report()


@task(name="fetch_emr_page", **network_retries())
def fetch_emr_page(settings: Settings, offset: int, limit: int) -> list[dict[str, Any]]:
    """One page of OpenEMR's patient list."""
    with OpenEmrClient.from_settings(settings) as emr:
        return emr.list_patients(limit=limit, offset=offset)


# Longer first wait: a page that failed is usually FHIR under load from the page before.
@task(name="sync_emr_page", **network_retries((5, 30)))
def sync_emr_page(settings: Settings, records: list[dict[str, Any]]) -> dict[str, int]:
    """Sync one page's patients; a patient that cannot be converted is counted, not fatal."""
    counts: Counter[str] = Counter()
    with FhirClient.from_settings(settings) as fhir:

        def one(record: dict[str, Any]) -> SyncOutcome:
            try:
                return sync_emr_record(settings, fhir, record)
            except TransientUpstreamError:
                raise
            except NeuroNovaError:
                return SyncOutcome.INVALID

        with ThreadPoolExecutor(max_workers=PAGE_THREADS) as pool:
            counts.update(pool.map(one, records))
    return dict(counts)


@task(name="pay_owed_write_backs", **network_retries())
def pay_owed_write_backs(settings: Settings) -> int:
    """Patients found while FHIR was down get their FHIR Patient now."""
    owed = patient_cache.pending_write_backs(settings.resolved_database_url)
    with FhirClient.from_settings(settings) as fhir, OpenEmrClient.from_settings(settings) as emr:
        for row in owed:
            resolve_patient(settings, row.mrn, fhir=fhir, emr=emr)
    return len(owed)


def publish_bulk_sync_report(counts: Mapping[str, int], since: str | None) -> None:
    """The bulk sync's counts as a table artifact (one row per outcome)."""
    create_table_artifact(
        key="sync-patients",
        table=[{"outcome": k, "patients": v} for k, v in sorted(counts.items())],
        description=f"Patients synced from OpenEMR (changed since {since or 'the beginning'})",
    )
