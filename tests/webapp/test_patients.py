"""`GET /api/patients/<mrn>` through nginx and gunicorn, and `neuronova patient MRN`."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from common.db import AuditEvent, session_scope
from common.settings import Settings
from neuronova.cli import app as cli
from tasks.patients.emr import OpenEmrClient
from webapp import accounts

pytestmark = pytest.mark.integration
PASSWORD = "patient api password"


@pytest.fixture(scope="module")
def api(gateway: Settings, patient_sources: Settings) -> httpx.Client:
    with session_scope(gateway.resolved_database_url) as session:
        if accounts.find_user(session, "nurse") is None:
            accounts.add_user(session, "nurse", "clinician", PASSWORD)
    client = httpx.Client(base_url=gateway.gateway_url, timeout=30)
    token = client.post("/api/auth/login", json={"username": "nurse", "password": PASSWORD}).json()[
        "access_token"
    ]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def _emr_patient(settings: Settings) -> str:
    mrn = f"A-{uuid.uuid4().hex[:10]}"
    with OpenEmrClient.from_settings(settings) as emr:
        emr.create_patient(
            {"fname": "Api", "lname": "Test", "DOB": "1975-06-07", "sex": "Male", "pubpid": mrn}
        )
    return mrn


def test_a_lookup_resolves_then_hits_the_cache(
    api: httpx.Client, patient_sources: Settings
) -> None:
    mrn = _emr_patient(patient_sources)
    first = api.get(f"/api/patients/{mrn}")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/fhir+json")
    assert first.headers["x-neuronova-source"] == "emr"
    patient = first.json()
    assert patient["resourceType"] == "Patient" and patient["id"]
    second = api.get(f"/api/patients/{mrn}")
    assert second.headers["x-neuronova-source"] == "cache" and second.json() == patient


def test_unknown_mrns_are_404_and_anonymous_callers_401(
    api: httpx.Client, gateway: Settings
) -> None:
    assert api.get(f"/api/patients/NOPE-{uuid.uuid4().hex[:8]}").status_code == 404
    assert httpx.get(f"{gateway.gateway_url}/api/patients/ANY").status_code == 401


def test_every_lookup_is_audited_with_the_mrn(api: httpx.Client, patient_sources: Settings) -> None:
    mrn = _emr_patient(patient_sources)
    response = api.get(f"/api/patients/{mrn}")
    request_id = response.headers["x-request-id"]
    with session_scope(patient_sources.resolved_database_url) as session:
        for _ in range(50):  # allowed look-ups are written in the next batch
            row = session.exec(
                select(AuditEvent).where(AuditEvent.request_id == request_id)
            ).first()
            if row is not None:
                break
            time.sleep(0.1)
    assert (
        row is not None
        and row.patient_id == mrn
        and row.username == "nurse"
        and row.reason == "from emr"
    )


def test_the_cli_does_the_same_lookup(patient_sources: Settings) -> None:
    mrn = _emr_patient(patient_sources)
    result = CliRunner().invoke(cli, ["patient", mrn, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["identifier"][0]["value"] == mrn
    missing = CliRunner().invoke(cli, ["patient", f"NOPE-{uuid.uuid4().hex[:8]}"])
    assert missing.exit_code == 4
