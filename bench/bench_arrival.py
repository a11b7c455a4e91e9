"""Arrival benchmark: studies sent by C-STORE as a modality sends them, to what the hospital gets.

The whole local stack (started here, in a temporary folder, on free ports: Orthanc, Prefect,
the workers, the arrival watcher, MariaDB, Redis, FHIR, the EMR emulator, the webapp and nginx).

1. CT arrival path: `storescu` sends `--instances` uncompressed 512x512 CT instances; measured
   from the last instance sent to every instance verified HTJ2K and indexed, with one cpu
   worker, with two (one study: it is one run, on one worker), and with two studies of half the
   size sent together on two workers (studies in parallel). The baseline, in the same run, is
   the send itself: Orthanc receiving the study over DICOM (`storescu`'s wall time).
2. The 94-slice sample brain MR, sent by `storescu`, from the last instance sent to (a) HTJ2K
   verified and indexed, (b) the SEG in Orthanc, (c) the FHIR report, (d) the alert on a
   clinician's open `/api/alerts` stream through nginx; against the target StableAge + 45 s.

    .venv/bin/python bench/bench_arrival.py [--instances 2000] [--stable-age 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid
from sqlmodel import col, func, select

from common.db import InferenceResult, Instance, migrate, session_scope
from common.settings import Settings
from neuronova.demo import (
    DEMO_CLINICIAN,
    ensure_demo_clinician,
    send_by_cstore,
)
from neuronova.prefect_env import use_stack_prefect
from neuronova.sample import write_sample_study
from neuronova.sample_mr import SAMPLE_MR_SEED, write_sample_mr_study
from neuronova.stack.component import settings_env
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from tasks.archive.orthanc import OrthancClient
from webapp import accounts


def as_new_study(files: list[Path], folder: Path) -> tuple[str, list[Path]]:
    """Copies of a series as a study of its own (new study, series and instance UIDs)."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    copies = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copies.append(folder / path.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return study, copies


def indexed(settings: Settings, study: str) -> int:
    with session_scope(settings.resolved_database_url) as session:
        count = session.exec(
            select(func.count()).where(col(Instance.study_instance_uid) == study)
        ).one()
    return int(count)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """perf_counter() when `check` first holds (polled every 0.1 s)."""
    deadline = time.perf_counter() + timeout_s
    while not check():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.perf_counter()


def send_and_time(settings: Settings, studies: list[tuple[str, list[Path]]]) -> tuple[float, float]:
    """(seconds storescu took, seconds from its end to every instance indexed)."""
    start = time.perf_counter()
    for _study, files in studies:  # one association after another, as one modality sends
        send_by_cstore(settings, files)
    sent = time.perf_counter()
    done = wait_until(
        lambda: all(indexed(settings, s) == len(f) for s, f in studies), 3600, "the index"
    )
    return sent - start, done - sent


def start_second_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    stack = LocalStack(settings)
    worker = stack.by_name["worker-cpu"]
    env = {**os.environ, **worker.env(stack.context(worker))}
    env["PREFECT_WORKER_WEBSERVER_PORT"] = "0"
    command = [
        str(Path(sys.executable).parent / "prefect"),
        *("worker", "start", "--pool", "cpu", "--name", "bench-cpu-2"),
        *("--limit", str(settings.worker_limit)),
    ]
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    os.killpg(worker.pid, signal.SIGINT)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def ct_rounds(settings: Settings, tmp: Path, instances: int) -> list[tuple[str, float, float]]:
    source = write_sample_study(tmp / "ct-source", slices=instances)
    rows = []
    one = as_new_study(source, tmp / "ct-1")
    rows.append(("1 study, 1 cpu worker", *send_and_time(settings, [one])))
    second = start_second_worker(settings, tmp / "second-worker.log")
    try:
        time.sleep(10)  # online in its pool
        two = as_new_study(source, tmp / "ct-2")
        rows.append(("1 study, 2 cpu workers", *send_and_time(settings, [two])))
        half = len(source) // 2
        pair = [
            as_new_study(source[:half], tmp / "ct-3a"),
            as_new_study(source[half:], tmp / "ct-3b"),
        ]
        rows.append(("2 studies of half the size, 2 cpu workers", *send_and_time(settings, pair)))
    finally:
        stop_worker(second)
    return rows


def mr_round(settings: Settings, tmp: Path) -> dict[str, float]:
    """Seconds from the last MR instance sent to each thing the hospital gets."""
    files, _mask = write_sample_mr_study(tmp / "mr", seed=SAMPLE_MR_SEED + 11)
    study, mrn = (
        str(pydicom.dcmread(files[0]).StudyInstanceUID),
        str(pydicom.dcmread(files[0]).PatientID),
    )
    password = ensure_demo_clinician(settings)
    with session_scope(settings.resolved_database_url) as session:
        accounts.grant_patient(session, DEMO_CLINICIAN, mrn)
    login = httpx.post(
        f"{settings.gateway_url}/api/auth/login",
        json={"username": DEMO_CLINICIAN, "password": password},
    )
    login.raise_for_status()
    heard: list[float] = []

    def listen() -> None:
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        with httpx.stream(
            "GET", f"{settings.gateway_url}/api/alerts", headers=headers, timeout=None
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and study in line:
                    heard.append(time.perf_counter())
                    return

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(1)
    send_by_cstore(settings, files)
    sent = time.perf_counter()
    marks = {
        "HTJ2K verified, indexed": wait_until(
            lambda: indexed(settings, study) >= len(files), 600, "the MR index"
        )
    }

    def reading() -> InferenceResult | None:
        with session_scope(settings.resolved_database_url) as session:
            return session.exec(
                select(InferenceResult).where(InferenceResult.study_instance_uid == study)
            ).first()

    marks["SEG in Orthanc"] = wait_until(lambda: reading() is not None, 600, "the SEG")
    with OrthancClient.from_settings(settings) as client:
        row = reading()
        assert row is not None and client.lookup(row.seg_sop_instance_uid) is not None
    marks["FHIR report"] = wait_until(
        lambda: bool((r := reading()) and r.fhir_report_id), 600, "the FHIR report"
    )
    wait_until(lambda: bool(heard), 600, "the alert")
    marks["alert on the clinician's stream"] = heard[0]
    return {name: moment - sent for name, moment in marks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--stable-age", type=int, default=5, help="Orthanc's StableAge, s")
    parser.add_argument("--skip-ct", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nn-bench-arrival-") as tmp_name:
        tmp = Path(tmp_name)
        settings = settings_on_free_ports(
            tmp / "stack",
            orthanc_stable_age_s=args.stable_age,
            arrivals_from="now",
            patient_sync_after_ingest=True,
        )
        os.environ.update(settings_env(settings))
        settings = Settings()
        migrate(settings.resolved_database_url)
        use_stack_prefect(settings)  # before the stack code imports Prefect
        stack = LocalStack(settings)
        print("starting the local stack for the benchmark …", file=sys.stderr)
        stack.up()  # registers the deployments too
        try:
            ct = [] if args.skip_ct else ct_rounds(settings, tmp, args.instances)
            mr = mr_round(settings, tmp)
        finally:
            stack.down()

    print(f"\nArrival by C-STORE, StableAge {args.stable_age} s, this machine's CPUs")
    if ct:
        print(f"\nCT, {args.instances} instances 512x512 int16, uncompressed:")
        print(
            f"{'run':<44}{'send s':>8}{'→ indexed s':>13}{'after stable':>14}{'inst/s':>8}"
            f"{'ratio':>7}"
        )
        for name, send_s, done_s in ct:
            after = done_s - args.stable_age
            rate = args.instances / after
            print(
                f"{name:<44}{send_s:>8.1f}{done_s:>13.1f}{after:>14.1f}{rate:>8.1f}"
                f"{send_s / after:>7.2f}"
            )
        print(
            "after stable: sent → indexed less StableAge (the wait for more instances);"
            " ratio: the send (Orthanc receiving over DICOM) / that"
        )
    print("\nsample brain MR, 94 instances, from the last instance sent:")
    for name, seconds in mr.items():
        print(f"  {name:<34}{seconds:>7.1f} s")
    target = args.stable_age + 45
    alert = mr["alert on the clinician's stream"]
    print(f"  target StableAge + 45 s = {target} s: {'met' if alert <= target else 'missed'}")


if __name__ == "__main__":
    main()
