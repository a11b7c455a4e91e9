"""`GET /api/patients/<mrn>` through nginx and gunicorn, and `neuronova patient MRN`."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from common.db import AuditEvent, CachedPatient, session_scope
from common.settings import Settings
from neuronova.cli import app as cli
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient
from webapp import accounts, create_app

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


def _emr_patient(settings: Settings, *, care_of: str | None = "nurse") -> str:
    """A new patient in the EMR alone, on `care_of`'s care list."""
    mrn = f"A-{uuid.uuid4().hex[:10]}"
    with OpenEmrClient.from_settings(settings) as emr:
        emr.create_patient(
            {"fname": "Api", "lname": "Test", "DOB": "1975-06-07", "sex": "Male", "pubpid": mrn}
        )
    if care_of is not None:
        with session_scope(settings.resolved_database_url) as session:
            accounts.grant_patient(session, care_of, mrn)
    return mrn


def _login(settings: Settings, username: str, role: str) -> httpx.Client:
    with session_scope(settings.resolved_database_url) as session:
        if accounts.find_user(session, username) is None:
            accounts.add_user(session, username, role, PASSWORD)
    client = httpx.Client(base_url=settings.gateway_url, timeout=30)
    login = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    return client


def _traces(settings: Settings, mrn: str) -> dict[str, object]:
    """What a look-up of `mrn` leaves behind: its cache row and FHIR Patients."""
    with session_scope(settings.resolved_database_url) as session:
        cached = session.get(CachedPatient, mrn)
    with FhirClient.from_settings(settings) as fhir:
        in_fhir = fhir.search_by_identifier("Patient", settings.mrn_system, mrn)
    return {"cached": cached is not None, "fhir": len(in_fhir)}


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


# --------------------------------------------------------------------------- the patient boundary


def test_a_clinician_reads_only_their_patients_and_a_refusal_leaves_no_trace(
    api: httpx.Client, patient_sources: Settings, gateway: Settings
) -> None:
    stranger = _emr_patient(patient_sources, care_of=None)
    refused = api.get(f"/api/patients/{stranger}")
    unknown = api.get(f"/api/patients/NOPE-{uuid.uuid4().hex[:8]}")
    # Refused and unknown look the same: nobody learns who exists.
    assert refused.status_code == unknown.status_code == 404
    assert refused.json() == unknown.json() == {"error": "not found"}
    # Nothing was resolved for the refused caller: no cache row, no write-back to FHIR.
    assert _traces(patient_sources, stranger) == {"cached": False, "fhir": 0}
    with session_scope(patient_sources.resolved_database_url) as session:
        row = session.exec(
            select(AuditEvent).where(AuditEvent.request_id == refused.headers["x-request-id"])
        ).one()
    assert (row.status, row.outcome, row.patient_id, row.reason) == (
        404,
        "denied",
        stranger,
        "not on care list",
    )

    # A radiologist reads every patient, the same one included.
    radiologist = _login(gateway, "rita", "radiologist")
    allowed = radiologist.get(f"/api/patients/{stranger}")
    radiologist.close()
    assert allowed.status_code == 200 and allowed.json()["identifier"][0]["value"] == stranger


def test_an_mrn_outside_the_grammar_never_reaches_fhir_or_the_cache(
    patient_sources: Settings, gateway: Settings
) -> None:
    target = _emr_patient(patient_sources, care_of=None)
    radiologist = _login(gateway, "rita", "radiologist")
    assert radiologist.get(f"/api/patients/{target}").status_code == 200  # now in FHIR
    for crafted in (
        f"NOPE,{patient_sources.mrn_system}%7C{target}",  # ',' is OR in a FHIR search
        f"{target}%2C{target}",
        f"{target}$x",
        f"{target}%5C",
        "-leading-dash",
        "x" * 65,
    ):
        response = radiologist.get(f"/api/patients/{crafted}")
        assert response.status_code == 404, crafted
        assert response.json() == {"error": "not found"}
    radiologist.close()
    with session_scope(patient_sources.resolved_database_url) as session:
        cached = list(session.exec(select(CachedPatient.mrn).where(CachedPatient.mrn != target)))
    assert not [mrn for mrn in cached if target in mrn]


def test_lookups_that_miss_the_cache_are_limited_per_user(patient_sources: Settings) -> None:
    settings = patient_sources.model_copy(update={"patient_lookups_per_minute": 2})
    app = create_app(settings)
    username = f"rl{uuid.uuid4().hex[:8]}"
    with session_scope(settings.resolved_database_url) as session:
        accounts.add_user(session, username, "radiologist", PASSWORD)
    client = app.test_client()
    login = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    first, second, third = (_emr_patient(settings, care_of=None) for _ in range(3))
    assert client.get(f"/api/patients/{first}", headers=headers).status_code == 200
    assert client.get(f"/api/patients/{second}", headers=headers).status_code == 200
    limited = client.get(f"/api/patients/{third}", headers=headers)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "60"
    assert _traces(settings, third) == {"cached": False, "fhir": 0}
    # Cache hits cost the sources nothing and are not limited.
    assert client.get(f"/api/patients/{first}", headers=headers).status_code == 200
    app.extensions["neuronova"].audit.flush()
