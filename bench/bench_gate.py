"""Gate benchmark: HTJ2K instances and frames through nginx + gate vs nginx → Orthanc direct.

One Orthanc, the webapp (gunicorn) and nginx, started here by the stack code in a temporary
folder on free ports, with the index on the stack's own MariaDB (a fresh database), as deployed.
A second nginx server block, for this benchmark only, proxies straight to the same Orthanc
with the same upstream settings: the baseline. The same 512x512 HTJ2K instances are fetched
both ways by `wrk` (Debian), bounded in connections and time, alternating gated and direct
runs so that the machine's noise falls on both:

    gated instance   GET /wado?requestType=WADO&studyUID=…&objectUID=…   (gate → /instances/ID/file)
    direct instance  GET /instances/ID/file
    gated frame      GET /dicom-web/studies/…/instances/…/frames/1       (the gate reads the frame
    direct frame     GET /instances/ID/frames/0/raw                       and wraps it: multipart)

Frames are an answer the gate builds itself (Orthanc's DICOMweb plugin cannot label HTJ2K
frames; see webapp/retrieve.py), so their ratio includes the webapp's copy of the pixel data.

Then a whole series (WADO-RS, multipart of application/dicom, as stored: `transfer-syntax=*`),
which the gate streams itself from the instances the index places in the study, against
Orthanc's own DICOMweb series retrieve direct; one client, the whole series each time,
alternating. And the same series decoded to explicit VR little endian (PS3.18's default), which
Orthanc cannot make from HTJ2K: its time only.

    .venv/bin/python bench/bench_gate.py [--instances 100] [--seconds 8] [--connections 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from common.db import Instance, migrate, session_scope
from common.settings import Settings
from neuronova.demo import open_viewer_link, viewer_link
from neuronova.sample import write_sample_study
from neuronova.stack.mariadb import create_database, on_stack_mysql
from neuronova.stack.ports import free_ports, settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import collect_inputs
from webapp import accounts

PASSWORD = "benchmark password"

LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], {["Authorization"] = "Bearer %s", ["Cookie"] = "%s"})
end
"""

DIRECT_SERVER = """
    server {
        listen 127.0.0.1:%d;
        server_name direct;
        location / {
            proxy_pass http://neuronova_orthanc;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host "orthanc";
            proxy_set_header Authorization $neuronova_orthanc_authorization;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
        }
    }
}
"""

BENCH_DATABASE = "neuronova"  # on the benchmark's own MariaDB, gone with its folder


def wrk(
    url: str, paths: list[str], viewer: tuple[str, str], seconds: int, connections: int, work: Path
) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) of one wrk run."""
    listing = work / f"paths-{uuid.uuid4().hex}.txt"
    listing.write_text("\n".join(paths) + "\n")
    script = work / f"script-{uuid.uuid4().hex}.lua"
    token, cookie = viewer
    script.write_text(LUA % (listing, token, cookie))
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"]}


def _ms(value: str) -> float:
    number, unit = float(re.match(r"[\d.]+", value).group(0)), re.sub(r"[\d.]", "", value)  # type: ignore[union-attr]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: run `make system` (Debian package wrk)")

    with tempfile.TemporaryDirectory(prefix="nn-bench-gate-") as tmp:
        work = Path(tmp)
        direct_port = free_ports(1)[0]
        settings = on_stack_mysql(settings_on_free_ports(work / "var"))
        stack = LocalStack(settings)
        try:
            stack.up(["mariadb"])
            create_database(settings.stack_mysql_url(), BENCH_DATABASE)
            migrate(settings.resolved_database_url)
            stack.up(["orthanc", "webapp", "nginx"])
            _add_direct_server(stack, direct_port)
            print(f"writing and ingesting {args.instances} 512x512 CT slices as HTJ2K …")
            write_sample_study(work / "study", slices=args.instances)
            outcomes = ingest_batch(settings, collect_inputs(work / "study"))
            assert all(o.status == "stored" for o in outcomes), {o.status for o in outcomes}
            _measure(settings, direct_port, args, work)
        finally:
            stack.down()


def _add_direct_server(stack: LocalStack, port: int) -> None:
    """Append the baseline server block to the running nginx's config and reload it."""
    home = stack.root / "nginx"
    config = home / "nginx.conf"
    body = config.read_text().rstrip()
    assert body.endswith("}")
    config.write_text(body[:-1] + DIRECT_SERVER % port)
    subprocess.run(
        [
            "nginx",
            "-p",
            str(home),
            "-c",
            str(config),
            "-e",
            str(home / "error.log"),
            "-s",
            "reload",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/system", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the baseline server block did not come up")


def _measure(settings: Settings, direct_port: int, args: argparse.Namespace, work: Path) -> None:
    url = settings.resolved_database_url
    with session_scope(url) as session:
        accounts.add_user(session, "bench", "radiologist", PASSWORD)
        rows = list(session.exec(Instance.__table__.select()))  # type: ignore[attr-defined]
    study = rows[0].study_instance_uid
    gateway, direct = settings.gateway_url, f"http://127.0.0.1:{direct_port}"
    # The viewer token and the cookie of the "browser" it is bound to, as the gate wants both.
    viewer = open_viewer_link(viewer_link(gateway, "bench", PASSWORD, study))

    def frames(r: object) -> str:
        return (
            f"/dicom-web/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"  # type: ignore[attr-defined]
            f"/instances/{r.sop_instance_uid}/frames/1"
        )  # type: ignore[attr-defined]

    cases = {
        "instance (baseline: the same WADO-URI request direct)": (
            [
                f"/wado?requestType=WADO&studyUID={r.study_instance_uid}&seriesUID={r.series_instance_uid}"
                f"&objectUID={r.sop_instance_uid}&contentType=application/dicom"
                for r in rows
            ],
            [
                f"/wado?requestType=WADO&studyUID={r.study_instance_uid}&seriesUID={r.series_instance_uid}"
                f"&objectUID={r.sop_instance_uid}&contentType=application/dicom"
                for r in rows
            ],
        ),
        "instance (baseline: /instances/ID/file direct, what the gate forwards to)": (
            [
                f"/wado?requestType=WADO&studyUID={r.study_instance_uid}&seriesUID={r.series_instance_uid}"
                f"&objectUID={r.sop_instance_uid}&contentType=application/dicom"
                for r in rows
            ],
            [f"/instances/{r.orthanc_id}/file" for r in rows],
        ),
        "frame (baseline: /instances/ID/frames/0/raw direct, what the gate reads)": (
            [frames(r) for r in rows],
            [f"/instances/{r.orthanc_id}/frames/0/raw" for r in rows],
        ),
    }
    # Orthanc's own WADO-RS frames, where its DICOMweb plugin answers them at all (1.10 does,
    # mislabelled; 1.12 answers 500): the baseline of earlier runs of this benchmark.
    plugin_frame = httpx.get(direct + frames(rows[0]), timeout=30)
    if plugin_frame.status_code == 200:
        cases["frame (baseline: Orthanc's DICOMweb frames direct)"] = (
            [frames(r) for r in rows],
            [frames(r) for r in rows],
        )
    else:
        print(f"Orthanc's DICOMweb frames answer {plugin_frame.status_code}: no baseline of theirs")
    first_frame = httpx.get(f"{direct}/instances/{rows[0].orthanc_id}/frames/0/raw").content
    _check_same_bytes(gateway, direct, cases, viewer, first_frame)
    _series_retrieve(gateway, direct, viewer, study, rows[0].series_instance_uid, args.rounds)
    size = sum(r.bytes_stored for r in rows) / len(rows) / 1024
    print(
        f"{len(rows)} instances, {size:.0f} KiB each on average; wrk: 2 threads, "
        f"{args.connections} connections, {args.seconds} s per run, {args.rounds} rounds\n"
    )
    for name, (gated_paths, direct_paths) in cases.items():
        gated_runs, direct_runs = [], []
        for _ in range(args.rounds):
            direct_runs.append(
                wrk(direct, direct_paths, viewer, args.seconds, args.connections, work)
            )
            gated_runs.append(
                wrk(gateway, gated_paths, viewer, args.seconds, args.connections, work)
            )
        g, d = _median(gated_runs), _median(direct_runs)
        print(name)
        print(
            f"{'':9s} direct {d['rps']:7.0f} req/s  p50 {d['p50']:6.2f} ms  p99 {d['p99']:6.2f} ms"
        )
        print(
            f"{'':9s} gated  {g['rps']:7.0f} req/s  p50 {g['p50']:6.2f} ms  p99 {g['p99']:6.2f} ms"
        )
        ratios = ", ".join(
            f"{gr['rps'] / dr['rps']:.2f}" for gr, dr in zip(gated_runs, direct_runs, strict=True)
        )
        print(
            f"{'':9s} gated/direct throughput {g['rps'] / d['rps']:.2f} (rounds: {ratios}); "
            f"at saturation p50 {g['p50'] - d['p50']:+.2f} ms, p99 {g['p99'] - d['p99']:+.2f} ms"
        )
        # The gate's own cost, without queueing: one connection, one request at a time.
        d1 = _median(
            [wrk(direct, direct_paths, viewer, args.seconds, 1, work) for _ in range(args.rounds)]
        )
        g1 = _median(
            [wrk(gateway, gated_paths, viewer, args.seconds, 1, work) for _ in range(args.rounds)]
        )
        print(
            f"{'':9s} one connection: direct p50 {d1['p50']:.2f} p99 {d1['p99']:.2f} ms, gated p50 "
            f"{g1['p50']:.2f} p99 {g1['p99']:.2f} ms; added p50 {g1['p50'] - d1['p50']:+.2f} ms, "
            f"p99 {g1['p99'] - d1['p99']:+.2f} ms\n"
        )


def _series_retrieve(
    gateway: str, direct: str, viewer: tuple[str, str], study: str, series: str, rounds: int
) -> None:
    """A whole series through the gate vs Orthanc's own series retrieve, alternating."""
    path = f"/dicom-web/studies/{study}/series/{series}"
    stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    decoded = 'multipart/related; type="application/dicom"'
    auth = {"Authorization": f"Bearer {viewer[0]}", "Cookie": viewer[1]}

    def fetch(base: str, accept: str, headers: dict[str, str]) -> tuple[float, int]:
        with httpx.Client(timeout=300) as client:
            started = time.perf_counter()
            answer = client.get(base + path, headers={**headers, "Accept": accept})
            answer.raise_for_status()
            return time.perf_counter() - started, len(answer.content)

    gated, own, explicit = [], [], []
    for _ in range(max(rounds, 3) * 2):
        own.append(fetch(direct, stored, {}))
        gated.append(fetch(gateway, stored, auth))
        explicit.append(fetch(gateway, decoded, auth))
    g = sorted(t for t, _ in gated)[len(gated) // 2]
    o = sorted(t for t, _ in own)[len(own) // 2]
    e = sorted(t for t, _ in explicit)[len(explicit) // 2]
    size_mb = gated[0][1] / 1e6
    print("series retrieve (WADO-RS, as stored; baseline: Orthanc's own DICOMweb series, direct)")
    print(f"{'':9s} direct {o:.3f} s  gated {g:.3f} s for {size_mb:.1f} MB")
    print(f"{'':9s} gated/direct throughput {o / g:.2f}")
    print(
        f"{'':9s} decoded to explicit VR little endian by the gate: {e:.3f} s for "
        f"{explicit[0][1] / 1e6:.1f} MB ({o / e:.2f} of Orthanc's as-stored time)\n"
    )


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}


def _check_same_bytes(
    gateway: str,
    direct: str,
    cases: dict[str, tuple[list[str], list[str]]],
    viewer: tuple[str, str],
    first_frame: bytes,
) -> None:
    """Both ways answer the same bytes (so the comparison is of like with like): the same file,
    or the same stored frame (`first_frame`) inside each multipart answer."""
    headers = {"Authorization": f"Bearer {viewer[0]}", "Cookie": viewer[1]}
    for name, (gated_paths, direct_paths) in cases.items():
        a = httpx.get(gateway + gated_paths[0], headers=headers, timeout=30)
        b = httpx.get(direct + direct_paths[0], timeout=30)
        assert a.status_code == b.status_code == 200, (name, a.status_code, b.status_code)
        if name.startswith("instance"):
            assert a.content == b.content, name
        else:
            assert first_frame in a.content and first_frame in b.content, name


if __name__ == "__main__":
    main()
