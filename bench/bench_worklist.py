"""Worklist benchmark: the signed-in worklist through nginx with 10,000 studies in the index.

The stack's MariaDB (a fresh database), the webapp (gunicorn) and nginx, started here by the
stack code in a temporary folder on free ports, as deployed. The index gets `--studies` studies
of `--patients` patients (each with a cached FHIR Patient, so the page shows names), AI readings
of the MR studies (each lesion a finding; every third reading judged by a radiologist), a
radiologist (sees every study) and a clinician with `--care` patients on her care list. The
review panel of a study and `GET /api/studies/<uid>/readings` (a Bearer token) are measured too. Each case is one browser's requests, one at a time, through nginx with the session cookie;
the baseline is `/api/health` through the same nginx and gunicorn (a request that asks the
database `SELECT 1`; Orthanc, which the stack starts for it, at most every 5 s), measured in the
same rounds, so the ratio is what the worklist itself costs.

    .venv/bin/python bench/bench_worklist.py [--studies 10000] [--patients 2000] [--care 50]
                                             [--requests 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlmodel import select

from common.db import (
    CachedPatient,
    InferenceFinding,
    InferenceResult,
    ReadingVerdict,
    Study,
    get_engine,
    migrate,
    session_scope,
)
from common.settings import Settings
from neuronova.stack.mariadb import create_database, on_stack_mysql
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from webapp import accounts

PASSWORD = "benchmark password"
BENCH_DATABASE = "neuronova"  # on the benchmark's own MariaDB, gone with its folder
TARGET_P50_MS = 50.0
GIVEN = ["Ada", "Bela", "Carl", "Dina", "Emil", "Fay", "Gus", "Hana", "Ivo", "Jana"]
FAMILY = ["Novak", "Berg", "Costa", "Dvorak", "Engel", "Fisher", "Gray", "Horn", "Ivanov", "Jones"]


def fill_index(settings: Settings, studies: int, patients: int, care: int) -> list[str]:
    """Studies, cached patients, readings and the two users; returns the clinician's MRNs."""
    rng = random.Random(16)
    mrns = [f"NN-B{n:06d}" for n in range(patients)]
    start = datetime(2020, 1, 1, tzinfo=UTC)
    url = settings.resolved_database_url
    engine = get_engine(url)
    with engine.begin() as connection:
        connection.execute(
            CachedPatient.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "mrn": mrn,
                    "resource": json.dumps(
                        {"resourceType": "Patient", "name": [{"given": [given], "family": family}]}
                    ),
                    "display_name": f"{given} {family}",  # as the patient cache keeps it
                    "source": "fhir",
                    "fhir_pending": False,
                    "updated_at": start,
                }
                for mrn, given, family in (
                    (mrn, rng.choice(GIVEN), rng.choice(FAMILY)) for mrn in mrns
                )
            ],
        )
        rows = []
        for n in range(studies):
            day = start + timedelta(days=rng.randrange(6 * 365))
            rows.append(
                {
                    "study_instance_uid": f"1.2.826.0.1.9{n:08d}",
                    "patient_id": mrns[n % patients],
                    "study_date": day.strftime("%Y%m%d"),
                    "modalities": rng.choice(["MR", "CT", "MR\\SEG"]),
                    "created_at": day,
                    "updated_at": day,
                }
            )
        connection.execute(Study.__table__.insert(), rows)  # type: ignore[attr-defined]
        connection.execute(
            InferenceResult.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "study_instance_uid": r["study_instance_uid"],
                    "series_instance_uid": r["study_instance_uid"] + ".1",
                    "patient_id": r["patient_id"],
                    "model_name": "brain-lesion",
                    "model_version": "1",
                    "model_sha256": "0" * 64,
                    "status": "completed",
                    "device": "cpu",
                    "lesion_count": n % 3,
                    "lesion_volume_ml": 1.5 * (n % 3),
                    "seg_series_uid": r["study_instance_uid"] + ".9",
                    "seg_sop_instance_uid": r["study_instance_uid"] + ".9.1",
                    "timings": "{}",
                    "created_at": start,
                }
                for n, r in enumerate(rows)
                if r["modalities"].startswith("MR")
            ],
        )
    with session_scope(url) as session:
        accounts.add_user(session, "bench-rad", "radiologist", PASSWORD)
        accounts.add_user(session, "bench-clin", "clinician", PASSWORD)
    _findings_and_verdicts(url)
    own = mrns[:: max(1, patients // care)][:care]
    with session_scope(url) as session:
        for mrn in own:
            accounts.grant_patient(session, "bench-clin", mrn)
    return own


def _findings_and_verdicts(url: str) -> None:
    """A finding per lesion of every reading, and a verdict on every third reading."""
    with session_scope(url) as session:
        readings = session.exec(
            select(
                InferenceResult.id,
                InferenceResult.lesion_count,
                InferenceResult.series_instance_uid,
            )
        ).all()
        rad = accounts.find_user(session, "bench-rad")
        assert rad is not None and rad.id is not None
        rad_id = rad.id
    findings = [
        {
            "result_id": reading_id,
            "number": n,
            "tracking_uid": f"{series}.77.{n}",
            "label": f"Lesion {n}",
            "volume_ml": 1.5,
            "key_sop_instance_uid": f"{series}.{n}",
        }
        for reading_id, count, series in readings
        for n in range(1, count + 1)
    ]
    verdicts = [
        {
            "uid": str(uuid.uuid4()),
            "result_id": reading_id,
            "verdict": "accepted",
            "user_id": rad_id,
            "username": "bench-rad",
            "at": datetime.now(UTC),
            "fhir_sent_at": datetime.now(UTC),
        }
        for reading_id, _count, _series in readings[::3]
    ]
    with get_engine(url).begin() as connection:
        if findings:
            connection.execute(InferenceFinding.__table__.insert(), findings)  # type: ignore[attr-defined]
        if verdicts:
            connection.execute(ReadingVerdict.__table__.insert(), verdicts)  # type: ignore[attr-defined]


def signed_in_client(gateway: str, username: str) -> httpx.Client:
    """A client holding a session cookie, signed in through the form as a browser is."""
    client = httpx.Client(base_url=gateway, timeout=30)
    form = client.get("/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, "no sign-in form at /"
    answer = client.post(
        "/", data={"csrf": csrf.group(1), "username": username, "password": PASSWORD}
    )
    if answer.status_code != 303:
        raise SystemExit(f"sign-in as {username} failed: {answer.status_code}")
    return client


def latencies(client: httpx.Client, path: str, count: int, expect: str) -> list[float]:
    """Milliseconds of `count` GETs of `path`, one at a time; every answer checked."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or expect not in response.text:
            raise SystemExit(f"{path}: {response.status_code}, expected text missing")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--care", type=int, default=50)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nn-bench-worklist-") as tmp:
        settings = on_stack_mysql(settings_on_free_ports(Path(tmp) / "var"))
        stack = LocalStack(settings)
        try:
            stack.up(["mariadb"])
            create_database(settings.stack_mysql_url(), BENCH_DATABASE)
            migrate(settings.resolved_database_url)
            print(f"indexing {args.studies} studies of {args.patients} patients …")
            own = fill_index(settings, args.studies, args.patients, args.care)
            stack.up(["orthanc", "webapp", "nginx"])  # the webapp is healthy with its archive
            _measure(settings, own, args)
        finally:
            stack.down()


def _measure(settings: Settings, own: list[str], args: argparse.Namespace) -> None:
    gateway = settings.gateway_url
    rad = signed_in_client(gateway, "bench-rad")
    clin = signed_in_client(gateway, "bench-clin")
    health = httpx.Client(base_url=gateway, timeout=30)
    login = health.post("/api/auth/login", json={"username": "bench-rad", "password": PASSWORD})
    login.raise_for_status()
    api = httpx.Client(
        base_url=gateway,
        timeout=30,
        headers={"Authorization": f"Bearer {login.json()['access_token']}"},
    )
    with session_scope(settings.resolved_database_url) as session:
        read = session.exec(
            select(InferenceResult.study_instance_uid).where(InferenceResult.lesion_count == 2)
        ).first()
    assert read is not None, "no reading with two lesions in the index"
    cases = {
        "radiologist, first page (all studies)": (rad, "/worklist", "data-study"),
        "clinician, first page (care list)": (clin, "/worklist", "data-study"),
        "clinician, search by MRN": (clin, f"/worklist?mrn={own[len(own) // 2]}", "data-study"),
        "radiologist, search by MRN": (rad, f"/worklist?mrn={own[0]}", "data-study"),
        "radiologist, search by name": (rad, "/worklist?name=novak", "data-study"),
        "radiologist, page 20": (rad, "/worklist?page=20", "data-study"),
        "radiologist, awaiting review": (rad, "/worklist?review=awaiting", "awaiting review"),
        "radiologist, review panel (2 lesions)": (
            rad,
            f"/worklist/review?study={read}",
            "Lesion 2",
        ),
        "API: GET /api/studies/<uid>/readings": (api, f"/api/studies/{read}/readings", "Lesion 2"),
    }
    for client, path, expect in cases.values():  # warm: connections, caches, templates
        latencies(client, path, 3, expect)
    latencies(health, "/api/health", 3, "ok")
    results: dict[str, list[float]] = {name: [] for name in cases}
    baseline: list[float] = []
    for _ in range(args.rounds):
        baseline += latencies(health, "/api/health", args.requests, "ok")
        for name, (client, path, expect) in cases.items():
            results[name] += latencies(client, path, args.requests, expect)
            time.sleep(1)  # under nginx's per-address API rate (50/s, burst 200)
    base = statistics.median(baseline)
    print(
        f"\nWorklist through nginx, {args.studies} studies of {args.patients} patients, clinician "
        f"with {args.care} patients; {args.requests} requests x {args.rounds} rounds, one at a time"
    )
    print(f"{'case':44s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50 / baseline':>15s}")
    print(f"{'baseline: /api/health (SELECT 1)':44s} {base:8.1f} {_p95(baseline):8.1f} {1.0:15.2f}")
    for name, values in results.items():
        p50 = statistics.median(values)
        verdict = "met" if p50 <= TARGET_P50_MS else "NOT met"
        print(f"{name:44s} {p50:8.1f} {_p95(values):8.1f} {p50 / base:15.2f}  ({verdict})")
    print(
        f"target: p50 <= {TARGET_P50_MS:.0f} ms for the first page, a search by MRN, the review "
        "panel and the readings API"
    )


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


if __name__ == "__main__":
    main()
