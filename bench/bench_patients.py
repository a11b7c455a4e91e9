"""Patient look-up and bulk-sync benchmark, through the real stack.

Orthanc is not needed: the webapp (gunicorn) and nginx, the FHIR server (@medplum/fhir-router on
Node, in memory) and the OpenEMR emulator seeded with `--patients` synthetic patients, the cache
on the machine's MariaDB (a fresh database). Measured, sequentially, through nginx with a
logged-in user's token:

    cache hit   GET /api/patients/<mrn> of a cached patient
    FHIR hit    the first look-up of an MRN that FHIR has and the cache has not
    EMR hit     the first look-up of an MRN only the EMR has (conversion + conditional create)

against a baseline in the same run: nginx's own `/healthz` (the floor of any answer through
the gateway). Then the bulk sync of every EMR patient (`sync_patients`' page task, run directly)
against bare, unconditional FHIR POSTs of the same Patients.

    .venv/bin/python bench/bench_patients.py [--patients 2000] [--lookups 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from common.db import migrate, session_scope
from neuronova.stack.component import settings_env
from neuronova.stack.mariadb import create_database, on_stack_mysql
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from tasks.patients.convert import emr_to_fhir_patient
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient
from webapp import accounts

PASSWORD = "benchmark password"

BENCH_DATABASE = "neuronova"  # on the benchmark's own MariaDB, gone with its folder


def timed(client: httpx.Client, paths: list[str]) -> list[float]:
    """Milliseconds per GET, sequentially; every answer must be a 200."""
    times = []
    for path in paths:
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:200]}")
    return times


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nn-bench-patients-") as tmp:
        settings = on_stack_mysql(
            settings_on_free_ports(Path(tmp) / "var", emr_demo_patients=args.patients)
        )
        os.environ.update(settings_env(settings))  # the flow's tasks read Settings() from here
        stack = LocalStack(settings)
        try:
            stack.up(["mariadb"])
            create_database(settings.stack_mysql_url(), BENCH_DATABASE)
            migrate(settings.resolved_database_url)
            stack.up(["webapp", "nginx", "fhir", "emr"])
            with session_scope(settings.resolved_database_url) as session:
                accounts.add_user(session, "bench", "clinician", PASSWORD)
            _lookups(settings, args.lookups)
            _bulk(settings, args.patients)
        finally:
            stack.down()


def _lookups(settings, n: int) -> None:  # type: ignore[no-untyped-def]
    with OpenEmrClient.from_settings(settings) as emr:
        records = emr.list_patients(limit=2 * n + 1, offset=0)
    fhir_only, emr_only, cached = records[:n], records[n : 2 * n], records[2 * n]
    with FhirClient.from_settings(settings) as fhir:  # FHIR has these, the cache does not
        for record in fhir_only:
            resource = emr_to_fhir_patient(
                record, mrn_system=settings.mrn_system, source=settings.emr_url
            )
            fhir.conditional_create(resource, system=settings.mrn_system, value=record["pubpid"])
    with httpx.Client(base_url=settings.gateway_url, timeout=30) as client:
        login = client.post("/api/auth/login", json={"username": "bench", "password": PASSWORD})
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        timed(client, [f"/api/patients/{cached['pubpid']}"] * 20)  # warm: the first one resolves it
        floor = timed(client, ["/healthz"] * n)
        cache = timed(client, [f"/api/patients/{cached['pubpid']}"] * n)
        fhir_hits = timed(client, [f"/api/patients/{r['pubpid']}" for r in fhir_only])
        emr_hits = timed(client, [f"/api/patients/{r['pubpid']}" for r in emr_only])
    print(f"look-ups through nginx, {n} each, sequential (ms):")
    base = statistics.median(floor)
    for name, values in (
        ("nginx /healthz (floor)", floor),
        ("cache hit", cache),
        ("FHIR hit", fhir_hits),
        ("EMR hit", emr_hits),
    ):
        median = statistics.median(values)
        print(
            f"  {name:24s} p50 {median:7.2f}  p99 {p(values, 0.99):7.2f}  ({median / base:5.1f}x the floor)"
        )


def _bulk(settings, patients: int) -> None:  # type: ignore[no-untyped-def]
    from flows.sync_patients import PAGE_SIZE
    from tasks.patients.prefect_tasks import sync_emr_page

    with OpenEmrClient.from_settings(settings) as emr:
        records = list(emr.iter_patients(page_size=PAGE_SIZE))
    start = time.perf_counter()
    counts: dict[str, int] = {}
    for offset in range(0, len(records), PAGE_SIZE):
        for key, value in sync_emr_page.fn(settings, records[offset : offset + PAGE_SIZE]).items():
            counts[key] = counts.get(key, 0) + value
    ours = time.perf_counter() - start
    # Baseline: the same Patients POSTed to FHIR without condition, cache or lock, 4 threads.
    from concurrent.futures import ThreadPoolExecutor

    resources = [
        emr_to_fhir_patient(r, mrn_system="urn:bench:baseline", source="bench") for r in records
    ]
    with httpx.Client(base_url=settings.fhir_url, timeout=30) as client:

        def post(resource: dict) -> None:  # type: ignore[type-arg]
            client.post(
                "/Patient", json=resource, headers={"Content-Type": "application/fhir+json"}
            ).raise_for_status()

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(post, resources))
        bare = time.perf_counter() - start
    print(
        f"\nbulk sync of {len(records)} EMR patients: {len(records) / ours:.0f} patients/s "
        f"({ours:.1f} s; {counts}); bare FHIR POSTs of the same Patients: "
        f"{len(records) / bare:.0f}/s; ours/bare {bare / ours:.2f}"
    )


if __name__ == "__main__":
    main()
