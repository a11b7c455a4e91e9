"""`sync_patients(since)`: the scheduled bulk sync, OpenEMR → FHIR → the cache.

Pages through OpenEMR's patient list (`_limit`/`_offset`, one Prefect task run per page, its
patients synced by a few threads), keeps those changed since `since` (OpenEMR's `date`, e.g.
"2026-11-01 00:00:00"; all when omitted), creates or updates their FHIR Patients (conditional on
the MRN) and the cache, and first pays any write-back owed from a time FHIR was down. Counts
go to the run's table artifact. Every step is idempotent per MRN, so a run that stops half-way
converges when run again.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from common.db import ensure_schema
from common.errors import NeuroNovaError, TransientUpstreamError
from common.settings import Settings
from tasks.patients import cache as patient_cache
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient
from tasks.patients.sync import resolve_patient, sync_emr_record
from tasks.retry import retry_if_transient

PAGE_SIZE = 200
THREADS = 4


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)  # fmt: skip
def fetch_emr_page(offset: int, limit: int) -> list[dict[str, Any]]:
    with OpenEmrClient.from_settings(Settings()) as emr:
        return emr.list_patients(limit=limit, offset=offset)


@task(retries=2, retry_delay_seconds=[5, 30], retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)  # fmt: skip
def sync_page(records: list[dict[str, Any]]) -> dict[str, int]:
    """Sync one page's patients; a patient that cannot be converted is counted, not fatal."""
    settings = Settings()
    counts: Counter[str] = Counter()
    with FhirClient.from_settings(settings) as fhir:

        def one(record: dict[str, Any]) -> str:
            try:
                return sync_emr_record(settings, fhir, record)
            except TransientUpstreamError:
                raise
            except NeuroNovaError:
                return "invalid"

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            counts.update(pool.map(one, records))
    return dict(counts)


@task
def pay_owed_write_backs() -> int:
    """Patients found while FHIR was down get their FHIR Patient now."""
    settings = Settings()
    owed = patient_cache.pending_write_backs(settings.resolved_database_url)
    with FhirClient.from_settings(settings) as fhir, OpenEmrClient.from_settings(settings) as emr:
        for row in owed:
            resolve_patient(settings, row.mrn, fhir=fhir, emr=emr)
    return len(owed)


@flow(name="sync_patients", log_prints=True)
def sync_patients(since: str | None = None, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    counts: Counter[str] = Counter()
    counts["write_backs_paid"] = pay_owed_write_backs()
    offset = 0
    while True:
        page = fetch_emr_page(offset, page_size)
        counts["seen"] += len(page)
        changed = [r for r in page if since is None or (r.get("date") or "") >= since]
        counts["skipped_unchanged_since"] += len(page) - len(changed)
        if changed:
            counts.update(sync_page(changed))
        if len(page) < page_size:
            break
        offset += page_size
    report = {"since": since, "counts": dict(counts)}
    create_table_artifact(
        key="sync-patients",
        table=[{"outcome": k, "patients": v} for k, v in sorted(counts.items())],
        description=f"Patients synced from OpenEMR (changed since {since or 'the beginning'})",
    )
    print(f"sync_patients: {dict(counts)}")
    return report
