"""`sync_patient(mrn)`: resolve one patient (cache → FHIR → OpenEMR, with write-backs).

The work is `tasks.patients.sync.resolve_patient`, run as one Prefect task with retries on
upstream hiccups (timeouts, 5xx); a 412 (several FHIR Patients for the MRN) is not retried:
the MRN is flagged for a merge and the run fails with that message.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from common.db import ensure_schema
from common.settings import Settings
from flows import REPORTED
from tasks.patients.sync import look_up_patient
from tasks.retry import retry_if_transient


@task(retries=3, retry_delay_seconds=[1, 5, 15], retry_jitter_factor=0.5,
      retry_condition_fn=retry_if_transient)  # fmt: skip
def resolve_patient_task(mrn: str) -> dict[str, Any]:
    settings = Settings()
    lookup = look_up_patient(settings, mrn)
    return {
        "mrn": lookup.mrn,
        "source": lookup.source,
        "fhir_pending": lookup.fhir_pending,
        "fhir_id": (lookup.resource or {}).get("id"),
        "found": lookup.resource is not None,
    }


@flow(name="sync_patient", log_prints=True, **REPORTED)
def sync_patient(mrn: str) -> dict[str, Any]:
    """Resolve one MRN; returns where it was found and whether FHIR is still owed a write."""
    ensure_schema(Settings().resolved_database_url)
    return resolve_patient_task(mrn)
