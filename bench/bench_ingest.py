"""Ingest benchmark: `neuronova ingest` end to end vs plain POSTs of the same files to Orthanc.

Both runs use one Orthanc (started here by the stack code, in a temporary folder, on free
ports) and the same files: a synthetic 512x512 signed-16 CT series. The baseline POSTs each
file as it is (explicit VR little endian, no transcoding, no verification, no index); our run
parses, validates, transcodes to HTJ2K, verifies bit for bit, stores, reads back, compares and
indexes. Orthanc is emptied between the two runs.

    .venv/bin/python bench/bench_ingest.py [--instances 600] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from common.settings import Settings
from neuronova.sample import write_sample_study
from neuronova.stack import LocalStack, free_port


def post_all(orthanc_url: str, files: list[Path], threads: int) -> float:
    """Seconds to POST every file, `threads` at a time; the bytes are read beforehand."""
    payloads = [f.read_bytes() for f in files]
    with httpx.Client(base_url=orthanc_url, timeout=60) as http:

        def post(data: bytes) -> None:
            http.post(
                "/instances", content=data, headers={"Content-Type": "application/dicom"}
            ).raise_for_status()

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(post, payloads))
        return time.perf_counter() - start


def empty_orthanc(orthanc_url: str) -> None:
    with httpx.Client(base_url=orthanc_url, timeout=120) as http:
        for study in http.get("/studies").json():
            http.delete(f"/studies/{study}").raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--workers", type=int, default=4, help="NEURONOVA_INGEST_WORKERS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nn-bench-") as tmp:
        env = {
            "NEURONOVA_DATA_DIR": f"{tmp}/data",
            "NEURONOVA_ORTHANC_URL": f"http://127.0.0.1:{free_port()}",
            "NEURONOVA_ORTHANC_DICOM_PORT": str(free_port()),
            "NEURONOVA_PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
            "NEURONOVA_INGEST_WORKERS": str(args.workers),
        }
        os.environ.update(env)
        settings = Settings()
        stack = LocalStack(settings)
        print("starting Orthanc and a Prefect server for the benchmark …", file=sys.stderr)
        stack.up(["orthanc", "prefect"])
        try:
            files = write_sample_study(Path(tmp) / "series", slices=args.instances)
            mb = sum(f.stat().st_size for f in files) / 1e6
            raw_1 = post_all(settings.orthanc_url, files, threads=1)
            empty_orthanc(settings.orthanc_url)
            raw_n = post_all(settings.orthanc_url, files, threads=args.workers)
            empty_orthanc(settings.orthanc_url)
            start = time.perf_counter()
            subprocess.run(
                [
                    str(Path(sys.executable).parent / "neuronova"),
                    "ingest",
                    str(files[0].parent),
                    "--json",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PREFECT_API_URL": settings.prefect_api_url},
            )
            ours = time.perf_counter() - start
        finally:
            stack.down()

    n = len(files)
    print(f"\nIngest of {n} CT instances 512x512 int16 ({mb:.0f} MB), one Orthanc, same files")
    print(f"{'run':<46}{'seconds':>9}{'inst/s':>9}")
    rows = [
        ("raw POST, 1 connection (baseline)", raw_1),
        (f"raw POST, {args.workers} connections", raw_n),
        ("neuronova ingest (CLI, end to end, HTJ2K+verify)", ours),
    ]
    for name, seconds in rows:
        print(f"{name:<46}{seconds:>9.2f}{n / seconds:>9.1f}")
    print(f"\nratio ours / raw POST (1 connection): {raw_1 / ours:.2f}  (target >= 0.60)")
    print(f"ratio ours / raw POST ({args.workers} connections): {raw_n / ours:.2f}")


if __name__ == "__main__":
    main()
