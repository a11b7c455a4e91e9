"""Patient sync against the real FHIR server (@medplum/fhir-router), the OpenEMR emulator and
MariaDB: the look-up order, the write-backs, and the faults the issue lists."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlmodel import select

from common.db import CachedPatient, PatientMergeFlag, session_scope
from common.settings import Settings
from neuronova.stack.ports import free_ports
from tasks.patients import cache as patient_cache
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient, MultiplePatientsForMrn
from tasks.patients.sync import look_up_patient

pytestmark = pytest.mark.integration


@pytest.fixture
def sources(patient_sources: Settings) -> Iterator[Settings]:
    yield patient_sources
    httpx.post(f"{patient_sources.emr_url}/_emulator/faults", json={})
    httpx.post(_fhir_root(patient_sources) + "/_faults", json={})


def _fhir_root(settings: Settings) -> str:
    return settings.fhir_url.removesuffix("/fhir/R4")


def _new_emr_patient(settings: Settings, **fields: str) -> str:
    """A patient created in the EMR (as a registration desk would); returns its MRN."""
    mrn = fields.pop("pubpid", f"T-{uuid.uuid4().hex[:10]}")
    with OpenEmrClient.from_settings(settings) as emr:
        emr.create_patient(
            {
                "fname": "Test",
                "lname": "Patient",
                "DOB": "1980-02-03",
                "sex": "Female",
                "pubpid": mrn,
                **fields,
            }
        )
    return mrn


def _fhir_patients(settings: Settings, mrn: str) -> list[dict]:  # type: ignore[type-arg]
    with FhirClient.from_settings(settings) as fhir:
        return fhir.search_by_identifier("Patient", settings.mrn_system, mrn)


def _resolve(settings: Settings, mrn: str):  # type: ignore[no-untyped-def]
    return look_up_patient(settings, mrn)


def test_emr_hit_is_written_to_fhir_and_the_cache_then_served_from_the_cache(
    sources: Settings,
) -> None:
    mrn = _new_emr_patient(sources, fname="Zoë")
    first = _resolve(sources, mrn)
    assert first.source == "emr" and not first.fhir_pending
    assert first.resource["id"] and first.resource["name"][0]["given"] == ["Zoë"]
    assert [p["id"] for p in _fhir_patients(sources, mrn)] == [first.resource["id"]]
    second = _resolve(sources, mrn)
    assert second.source == "cache" and second.resource == first.resource


def test_fhir_hit_is_saved_to_the_cache(sources: Settings) -> None:
    mrn = f"F-{uuid.uuid4().hex[:10]}"
    with FhirClient.from_settings(sources) as fhir:
        created, was_new = fhir.conditional_create(
            {
                "resourceType": "Patient",
                "identifier": [{"system": sources.mrn_system, "value": mrn}],
                "gender": "other",
            },
            system=sources.mrn_system,
            value=mrn,
        )
    assert was_new
    found = _resolve(sources, mrn)
    assert found.source == "fhir" and found.resource["id"] == created["id"]
    assert patient_cache.cached_patient(sources.resolved_database_url, mrn) is not None


def test_an_mrn_nowhere_is_none_and_nothing_is_cached(sources: Settings) -> None:
    mrn = f"X-{uuid.uuid4().hex[:10]}"
    assert _resolve(sources, mrn).resource is None
    assert patient_cache.cached_patient(sources.resolved_database_url, mrn) is None
    assert _fhir_patients(sources, mrn) == []


def test_fhir_503_then_success_and_429_with_retry_after(sources: Settings) -> None:
    mrn = _new_emr_patient(sources)
    httpx.post(_fhir_root(sources) + "/_faults", json={"fail_next": [503, 429], "retry_after": "1"})
    found = _resolve(sources, mrn)
    assert found.source == "emr" and not found.fhir_pending
    assert len(_fhir_patients(sources, mrn)) == 1
    assert httpx.get(_fhir_root(sources) + "/_faults").json()["pending"] == 0


def test_fhir_down_still_answers_from_the_emr_and_the_write_back_is_paid_later(
    sources: Settings,
) -> None:
    mrn = _new_emr_patient(sources)
    (closed,) = free_ports(1)
    down = sources.model_copy(update={"fhir_url": f"http://127.0.0.1:{closed}/fhir/R4"})
    found = _resolve(down, mrn)
    assert found.source == "emr" and found.fhir_pending and found.resource is not None
    row = patient_cache.cached_patient(sources.resolved_database_url, mrn)
    assert row is not None and row.fhir_pending
    assert _fhir_patients(sources, mrn) == []
    again = _resolve(sources, mrn)  # FHIR is back: the owed write-back happens
    assert not again.fhir_pending and len(_fhir_patients(sources, mrn)) == 1
    assert patient_cache.cached_patient(sources.resolved_database_url, mrn).fhir_pending is False  # type: ignore[union-attr]


def test_a_rerun_after_a_crash_between_cache_and_fhir_converges(sources: Settings) -> None:
    mrn = _new_emr_patient(sources)
    with OpenEmrClient.from_settings(sources) as emr:
        record = emr.find_by_mrn(mrn)
    from tasks.patients.convert import emr_to_fhir_patient

    resource = emr_to_fhir_patient(record, mrn_system=sources.mrn_system, source=sources.emr_url)  # type: ignore[arg-type]
    # The crash: the cache row is written, the FHIR create never happened.
    patient_cache.save_patient(
        sources.resolved_database_url, mrn=mrn, resource=resource, source="emr", fhir_pending=True
    )
    assert _resolve(sources, mrn).fhir_pending is False
    assert _resolve(sources, mrn).source == "cache"
    assert len(_fhir_patients(sources, mrn)) == 1


def test_eight_parallel_lookups_of_a_new_mrn_make_one_fhir_patient(sources: Settings) -> None:
    mrn = _new_emr_patient(sources)
    barrier = threading.Barrier(8)

    def lookup(_: int) -> str:
        barrier.wait()
        return _resolve(sources, mrn).resource["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(lookup, range(8)))
    assert len(ids) == 1
    assert len(_fhir_patients(sources, mrn)) == 1


def test_several_fhir_patients_for_one_mrn_stop_and_flag_a_merge(sources: Settings) -> None:
    mrn = _new_emr_patient(sources)
    body = {"resourceType": "Patient", "identifier": [{"system": sources.mrn_system, "value": mrn}]}
    for _ in range(2):  # two unconditional creates: the duplicate a merge must fix
        httpx.post(
            f"{sources.fhir_url}/Patient",
            json=body,
            headers={"Content-Type": "application/fhir+json"},
        )
    with pytest.raises(MultiplePatientsForMrn):
        _resolve(sources, mrn)
    with session_scope(sources.resolved_database_url) as session:
        assert session.get(PatientMergeFlag, mrn) is not None
    assert len(_fhir_patients(sources, mrn)) == 2  # nothing created


def test_emr_tokens_are_refreshed_when_expired(sources: Settings) -> None:
    with OpenEmrClient.from_settings(sources) as emr:
        assert emr.list_patients(limit=1)
        httpx.post(f"{sources.emr_url}/_emulator/faults", json={"expire_tokens": True})
        assert emr.list_patients(limit=1)  # a 401, a new token, the same answer


def test_emr_pages_with_limit_and_offset(sources: Settings) -> None:
    with OpenEmrClient.from_settings(sources) as emr:
        first, second = emr.list_patients(limit=5, offset=0), emr.list_patients(limit=5, offset=5)
    assert len(first) == len(second) == 5
    assert {p["uuid"] for p in first}.isdisjoint({p["uuid"] for p in second})
    assert all(isinstance(v, str) for p in first for v in p.values())


def test_an_emr_timeout_after_a_create_is_looked_up_never_posted_twice(sources: Settings) -> None:
    from tasks.patients.emr import ensure_emr_patient

    mrn = f"E-{uuid.uuid4().hex[:10]}"
    fields = {"fname": "Late", "lname": "Answer", "DOB": "1990-01-01", "sex": "Male", "pubpid": mrn}
    credentials = OpenEmrClient.from_settings(sources)
    fast = OpenEmrClient(
        sources.emr_url,
        client_id=credentials._client[0],
        client_secret=credentials._client[1],
        username=credentials._user[0],
        password=credentials._user[1],
        timeout_s=1.0,
    )
    httpx.post(f"{sources.emr_url}/_emulator/faults", json={"hang_next": 1, "hang_s": 3})
    record = ensure_emr_patient(fast, fields)
    assert record["pubpid"] == mrn
    with OpenEmrClient.from_settings(sources) as emr:
        assert sum(1 for p in emr.iter_patients() if p["pubpid"] == mrn) == 1


def test_a_dropped_mysql_connection_mid_transaction_is_retried_without_orphans(
    sources: Settings,
) -> None:
    url = sources.resolved_database_url
    mrn = f"M-{uuid.uuid4().hex[:10]}"
    killer = create_engine(url.split("?")[0], isolation_level="AUTOCOMMIT")
    attempts: list[int] = []

    def work(session):  # type: ignore[no-untyped-def]
        attempts.append(1)
        session.add(
            CachedPatient(mrn=mrn, resource=json.dumps({"resourceType": "Patient"}), source="emr")
        )
        session.flush()
        if len(attempts) == 1:  # the first try loses its connection before the commit
            own_id = session.connection().execute(text("SELECT CONNECTION_ID()")).scalar()
            with killer.connect() as other:
                other.execute(text(f"KILL CONNECTION {int(own_id)}"))
        return mrn

    assert patient_cache.write_transaction(url, work) == mrn
    assert len(attempts) == 2
    with session_scope(url) as session:
        assert len(session.exec(select(CachedPatient).where(CachedPatient.mrn == mrn)).all()) == 1
    killer.dispose()
