"""Ingest benchmark: our ingest end to end vs plain POSTs of the same files to the same Orthanc.

One Orthanc and one Prefect server (started here by the stack code, in a temporary folder, on
free ports) and the same files: a synthetic 512x512 signed-16 CT series. The baselines POST
each file as it is (explicit VR little endian: no transcoding, no verification, no index), on
one connection and on `--workers` connections. Ours parses, validates, transcodes to HTJ2K,
decodes again and compares every pixel, stores, reads back and compares bytes, and indexes;
measured twice: the `ingest_study` flow in this process (a Prefect run against the server),
and the `neuronova ingest` command as a user runs it (interpreter start and imports
included). Orthanc is emptied, and the index is fresh (schema created beforehand, as in a
deployment), before each run. The hand-offs after ingest (patient sync, inference) are off:
they are not ingest, and with no FHIR server or EMR here the patient sync would spend its
retry delays (about 20 s) inside the measured time.

    .venv/bin/python bench/bench_ingest.py [--instances 600] [--workers 4] [--rounds 1]

The headline is the command against `--workers` connections (issue 15: target >= 0.6): a
user's ingest has to keep up with a sender that uses several connections. With `--rounds N`
every measurement is repeated N times, interleaved (the machine is shared), and medians are
printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from common.db import migrate
from common.settings import Settings
from neuronova.sample import write_sample_study
from neuronova.stack.ports import free_ports
from neuronova.stack.supervisor import LocalStack


def post_all(settings: Settings, files: list[Path], threads: int) -> float:
    """Seconds to POST every file, `threads` at a time; the bytes are read beforehand."""
    payloads = [f.read_bytes() for f in files]
    with _orthanc(settings, timeout_s=60) as http:

        def post(data: bytes) -> None:
            http.post(
                "/instances", content=data, headers={"Content-Type": "application/dicom"}
            ).raise_for_status()

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(post, payloads))
        return time.perf_counter() - start


def run_flow_in_process(folder: Path, data_dir: str) -> float:
    """Seconds for the `ingest_study` flow: Prefect run, batches, artifacts, index."""
    os.environ["NEURONOVA_DATA_DIR"] = data_dir  # a fresh index: every instance is new
    migrate(Settings().resolved_database_url)  # a deployed index has its schema already
    from flows.ingest_study import ingest_study

    start = time.perf_counter()
    report = ingest_study(str(folder))
    elapsed = time.perf_counter() - start
    assert report["counts"]["stored"] == len(report["files"]), report["counts"]
    return elapsed


def run_cli(folder: Path, data_dir: str) -> float:
    """Seconds for `neuronova ingest` as a user runs it, interpreter start included."""
    migrate(Settings(data_dir=Path(data_dir)).resolved_database_url)
    start = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "neuronova"), "ingest", str(folder), "--json"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "NEURONOVA_DATA_DIR": data_dir},
    )
    return time.perf_counter() - start


def _orthanc(settings: Settings, timeout_s: float) -> httpx.Client:
    """Orthanc's REST API with its service account, as our clients use it."""
    return httpx.Client(
        base_url=settings.orthanc_url, auth=settings.orthanc_credentials(), timeout=timeout_s
    )


def empty_orthanc(settings: Settings) -> None:
    with _orthanc(settings, timeout_s=120) as http:
        for study in http.get("/studies").json():
            http.delete(f"/studies/{study}").raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--workers", type=int, default=4, help="NEURONOVA_INGEST_WORKERS")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="NEURONOVA_INGEST_BATCH_SIZE (default: ours)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat, interleaved; medians")
    parser.add_argument("--no-flow", action="store_true", help="skip the in-process flow run")
    args = parser.parse_args()

    times: dict[str, list[float]] = {"raw_1": [], "raw_n": [], "flow": [], "cli": []}
    with tempfile.TemporaryDirectory(prefix="nn-bench-") as tmp:
        http_port, dicom_port, prefect_port = free_ports(3)
        os.environ.update(
            {
                "NEURONOVA_DATA_DIR": f"{tmp}/stack",
                "NEURONOVA_ORTHANC_URL": f"http://127.0.0.1:{http_port}",
                "NEURONOVA_ORTHANC_DICOM_PORT": str(dicom_port),
                "NEURONOVA_PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                "NEURONOVA_INGEST_WORKERS": str(args.workers),
                "NEURONOVA_PATIENT_SYNC_AFTER_INGEST": "false",
                "NEURONOVA_INFERENCE_AFTER_INGEST": "false",
            }
        )
        if args.batch_size is not None:
            os.environ["NEURONOVA_INGEST_BATCH_SIZE"] = str(args.batch_size)
        settings = Settings()
        # The flow and the CLI below keep data dirs of their own: give them the stack's account.
        account = settings.orthanc_credentials()
        assert account is not None
        os.environ["NEURONOVA_ORTHANC_USERNAME"], os.environ["NEURONOVA_ORTHANC_PASSWORD"] = account
        stack = LocalStack(settings)
        print("starting Orthanc and a Prefect server for the benchmark …", file=sys.stderr)
        stack.up(["orthanc", "prefect"])
        try:
            files = write_sample_study(Path(tmp) / "series", slices=args.instances)
            folder = files[0].parent
            mb = sum(f.stat().st_size for f in files) / 1e6
            os.environ["PREFECT_API_URL"] = settings.prefect_api_url
            os.environ["PREFECT_API_AUTH_STRING"] = settings.stack_prefect_auth_string()
            for r in range(args.rounds):
                times["raw_1"].append(post_all(settings, files, threads=1))
                empty_orthanc(settings)
                times["raw_n"].append(post_all(settings, files, threads=args.workers))
                empty_orthanc(settings)
                if not args.no_flow:
                    times["flow"].append(run_flow_in_process(folder, f"{tmp}/data-flow-{r}"))
                    empty_orthanc(settings)
                times["cli"].append(run_cli(folder, f"{tmp}/data-cli-{r}"))
                empty_orthanc(settings)
                print(
                    f"round {r + 1}: "
                    + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v),
                    file=sys.stderr,
                )
        finally:
            stack.down()

    n = len(files)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(
        f"\nIngest of {n} CT instances 512x512 int16 ({mb:.0f} MB), one Orthanc, same files{rounds}"
    )
    print(f"{'run':<54}{'seconds':>9}{'inst/s':>9}")
    rows = [
        ("raw POST, 1 connection (baseline)", med["raw_1"]),
        (f"raw POST, {args.workers} connections", med["raw_n"]),
        ("ingest_study flow (HTJ2K, verify, read-back, index)", med.get("flow")),
        ("neuronova ingest CLI (+ interpreter start, imports)", med["cli"]),
    ]
    for name, seconds in rows:
        if seconds is not None:
            print(f"{name:<54}{seconds:>9.2f}{n / seconds:>9.1f}")
    cli_n = med["raw_n"] / med["cli"]
    print(
        f"\nCLI / raw POST {args.workers} connections:  {cli_n:.2f}  "
        f"(target >= 0.60, moonshot >= 1.0)"
    )
    if "flow" in med:
        print(f"flow / raw POST {args.workers} connections: {med['raw_n'] / med['flow']:.2f}")
        print(f"flow / raw POST 1 connection:  {med['raw_1'] / med['flow']:.2f}")
    print(f"CLI  / raw POST 1 connection:  {med['raw_1'] / med['cli']:.2f}")


if __name__ == "__main__":
    main()
