"""The bulk sync flow against the seeded EMR emulator, the FHIR server and MariaDB."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from common.settings import Settings
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient

pytestmark = pytest.mark.integration


def test_bulk_sync_creates_then_leaves_alone_then_updates(
    patient_sources: Settings, prefect_harness: None
) -> None:
    from flows.sync_patients import sync_patients

    settings = patient_sources
    with OpenEmrClient.from_settings(settings) as emr:
        total = sum(1 for _ in emr.iter_patients())
    first = sync_patients()["counts"]
    assert first["seen"] == total
    outcomes = ("created", "linked", "updated", "unchanged", "flagged", "invalid", "pending")
    assert sum(first.get(k, 0) for k in outcomes) == total
    assert first.get("pending", 0) == 0 and first.get("invalid", 0) == 0
    assert first.get("flagged", 0) <= 1  # the merge test's MRN, when this runs in the suite

    second = sync_patients()["counts"]
    # Nothing changed in the EMR: nothing written (a flagged MRN stays flagged).
    assert second["unchanged"] + second.get("flagged", 0) == total

    time.sleep(1.1)  # OpenEMR's `date` has whole seconds: what comes next is strictly later
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1.1)
    with OpenEmrClient.from_settings(settings) as emr:
        record = emr.list_patients(limit=1, offset=3)[0]
        token = emr._access_token()
    changed = httpx.put(
        f"{settings.emr_url}/apis/default/api/patient/{record['uuid']}",
        json={"lname": "Renamed"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert changed.status_code == 200
    third = sync_patients(since=since)["counts"]
    assert third.get("updated") == 1 and third["skipped_unchanged_since"] == total - 1
    with FhirClient.from_settings(settings) as fhir:
        (patient,) = fhir.search_by_identifier("Patient", settings.mrn_system, record["pubpid"])
    assert patient["name"][0]["family"] == "Renamed"
    assert patient["meta"]["versionId"]
