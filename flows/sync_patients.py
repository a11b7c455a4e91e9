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
from typing import TypedDict

from prefect import flow

from common.db import ensure_schema
from common.settings import Settings
from tasks.patients.prefect_tasks import (
    fetch_emr_page,
    pay_owed_write_backs,
    publish_bulk_sync_report,
    sync_emr_page,
)

PAGE_SIZE = 200


class BulkSyncReport(TypedDict):
    since: str | None
    counts: dict[str, int]  # seen, created, updated, unchanged, invalid, write_backs_paid, …


@flow(name="sync_patients", log_prints=True)
def sync_patients(since: str | None = None, page_size: int = PAGE_SIZE) -> BulkSyncReport:
    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    counts: Counter[str] = Counter()
    counts["write_backs_paid"] = pay_owed_write_backs(settings)
    offset = 0
    while True:
        page = fetch_emr_page(settings, offset, page_size)
        counts["seen"] += len(page)
        changed = [r for r in page if since is None or (r.get("date") or "") >= since]
        counts["skipped_unchanged_since"] += len(page) - len(changed)
        if changed:
            counts.update(sync_emr_page(settings, changed))
        if len(page) < page_size:
            break
        offset += page_size
    report = BulkSyncReport(since=since, counts=dict(counts))
    publish_bulk_sync_report(counts, since)
    print(f"sync_patients: {dict(counts)}")
    return report
