"""`sync_patient(mrn)`: resolve one patient (cache → FHIR → OpenEMR, with write-backs).

The work is `tasks.patients.sync.resolve_patient`, run as one Prefect task with retries on
upstream hiccups (timeouts, 5xx); a 412 (several FHIR Patients for the MRN) is not retried:
the MRN is flagged for a merge and the run fails with that message.
"""

from __future__ import annotations

from prefect import flow

from common.db import ensure_schema
from common.settings import Settings
from flows import REPORTED
from tasks.patients.prefect_tasks import resolve_patient_task
from tasks.patients.sync import PatientSyncReport


@flow(name="sync_patient", log_prints=True, **REPORTED)
def sync_patient(mrn: str) -> PatientSyncReport:
    """Resolve one MRN; returns where it was found and whether FHIR is still owed a write."""
    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    return resolve_patient_task(settings, mrn)
