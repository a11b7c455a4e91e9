"""End-to-end inference benchmark: one brain MR study → SEG in Orthanc and a report in FHIR.

The sample brain MR (1 mm: 189 slices 233x197, like a clinical 3D FLAIR; `--spacing 2` for the
small demo study) is ingested into an Orthanc started here, with the FHIR server and the EMR
emulator. Then:

1. the whole `run_inference` flow once, cold (against a Prefect server started here, the bundle
   loaded for the first time in this process): what a study costs the first time a worker sees the model;
2. `--repeats` warm runs of the same steps without Prefect (each under a new model version, so
   every run stores a new SEG and new FHIR resources): read (fetch + HTJ2K decode), segment
   (to the model's grid, sliding windows, back), the DICOM results, FHIR. The results both
   ways, in the same run: "before" (one SEG segment for all lesions, no SR: the reading until
   issue 24) and "now" (lesions numbered, a segment per lesion, the TID 1500 SR, both read back
   and stored verified: `store_seg_task`), and the whole reading's cost ratio now/before;
3. the segmentation alone on every device given (`--devices cpu,cuda`): the GPU/CPU ratio on the
   same volume. Without CUDA here it says so and measures the CPU only.

    .venv/bin/python bench/bench_inference.py [--repeats 3] [--spacing 1.0] [--devices cpu,cuda]

`--in-memory` skips Orthanc, FHIR and the EMR (for the GPU machine, which has none of them):
the study is read from its files and only read + segment + SEG build are timed.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import torch

from neuronova.sample_mr import write_sample_mr_study
from tasks.dicom.seg import build_lesion_seg
from tasks.dicom.volume import Volume, volume_from_files
from tasks.inference.lesions import measure_lesions
from tasks.inference.results import seg_uids
from tasks.inference.segmentation import load_bundle, segment_volume

BUNDLE = Path(__file__).resolve().parent.parent / "models" / "brain_lesion_seg"


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def seg_bytes(
    volume: Volume, mask: Any, study_uid: str, source_series_uid: str, version: str
) -> bytes:
    series_uid, sop_uid = seg_uids(study_uid, source_series_uid, "bench", version)
    seg = build_lesion_seg(
        volume.headers,
        mask,
        algorithm_name="bench",
        algorithm_version=version,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
    )
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def segmentation_by_device(volume: Volume, devices: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of `segment_volume` per device (after one warm-up run each)."""
    medians = {}
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"  {device}: no CUDA device on this machine, not measured")
            continue
        bundle = load_bundle(BUNDLE, device)
        segment_volume(bundle, volume)  # warm-up: kernels, allocator
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            _run, seconds = timed(lambda b=bundle: segment_volume(b, volume))  # type: ignore[misc]
            times.append(seconds)
        medians[device] = statistics.median(times)
        print(f"  segment on {device:5s}: {medians[device]:6.2f} s (median of {repeats})")
    if "cpu" in medians and len(medians) > 1:
        for device, seconds in medians.items():
            if device != "cpu":
                print(f"  → {device} is {medians['cpu'] / seconds:.1f}x the CPU")
    return medians


def in_memory(files: list[Path], devices: list[str], repeats: int) -> None:
    blobs = [p.read_bytes() for p in files]
    volume, read_s = timed(lambda: volume_from_files(blobs, with_headers=True))
    print(
        f"{len(blobs)} slices {volume.pixels.shape[1]}x{volume.pixels.shape[2]}, "
        f"spacing {volume.spacing} mm; read from memory {read_s:.2f} s"
    )
    medians = segmentation_by_device(volume, devices, repeats)
    best = min(medians, key=lambda d: medians[d])
    bundle = load_bundle(BUNDLE, best)
    run = segment_volume(bundle, volume)
    study = str(volume.headers[0].StudyInstanceUID)
    _data, build_s = timed(lambda: seg_bytes(volume, run.mask, study, "bench"))
    total = read_s + medians[best] + build_s
    print(f"  read + segment ({best}) + SEG build: {total:.2f} s")


def with_stack(tmp: Path, files: list[Path], devices: list[str], repeats: int) -> None:
    from common.db import migrate
    from neuronova.prefect_env import use_prefect_server
    from neuronova.stack.component import settings_env
    from neuronova.stack.ports import settings_on_free_ports
    from neuronova.stack.supervisor import LocalStack
    from tasks.archive.orthanc import OrthancClient
    from tasks.dicom.volume import read_series_from_orthanc
    from tasks.inference.lesions import label_lesions
    from tasks.inference.prefect_tasks import store_seg_task
    from tasks.inference.report import LesionFindings, publish_lesion_results
    from tasks.inference.results import store_seg
    from tasks.inference.series import choose_series, find_study_series
    from tasks.ingest.batch import ingest_batch
    from tasks.ingest.inputs import collect_inputs
    from tasks.patients.emr import OpenEmrClient
    from tasks.patients.fhir import FhirClient
    from tasks.patients.sync import resolve_patient

    settings = settings_on_free_ports(tmp / "var", inference_device="cpu")
    os.environ.update(settings_env(settings))  # the flow builds its own Settings from these
    stack = LocalStack(settings)
    try:
        stack.up(["orthanc", "prefect", "fhir", "emr", "redis"])
        use_prefect_server(settings)  # before Prefect is first imported
        migrate(settings.resolved_database_url)
        ingest_batch(settings, collect_inputs(files[0].parent))
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        from flows.run_inference import run_inference

        result, cold_s = timed(lambda: run_inference(study_uid))
        assert result["status"] == "completed", result
        steps = ", ".join(f"{k} {v:.2f}" for k, v in result["timings"].items())
        print(f"cold flow run (Prefect, bundle loaded): {cold_s:.2f} s  [{steps}]")

        bundle = load_bundle(BUNDLE, "cpu")
        rows: dict[str, list[float]] = {"read": [], "segment": [], "seg": [], "fhir": []}
        results_now: list[float] = []
        with (
            OrthancClient.from_settings(settings) as client,
            FhirClient.from_settings(settings) as fhir,
            OpenEmrClient.from_settings(settings) as emr,
        ):
            for i in range(repeats):
                # A new model version per run: a real SEG and real FHIR creates every time.
                version = f"bench-{time.time_ns()}-{i}"
                clock = time.perf_counter()
                tags, series = find_study_series(client, study_uid)
                choice = choose_series(tags, series, min_slices=16)
                volume = read_series_from_orthanc(client, choice.orthanc_id, with_headers=True)
                rows["read"].append(time.perf_counter() - clock)
                clock = time.perf_counter()
                run = segment_volume(bundle, volume)
                rows["segment"].append(time.perf_counter() - clock)
                clock = time.perf_counter()
                sop_uid = seg_uids(study_uid, choice.series_uid, "bench", version)[1]
                data = seg_bytes(volume, run.mask, study_uid, choice.series_uid, version)
                store_seg(settings, data, study_uid, sop_uid)
                rows["seg"].append(time.perf_counter() - clock)
                # The flow labels the lesions once, in place of the measuring the "before"
                # reading did (timed under fhir below): not counted again here.
                labels, lesions = label_lesions(run.mask, volume.spacing)
                clock = time.perf_counter()
                store_seg_task.fn(
                    settings,
                    volume,
                    labels,
                    study_uid,
                    choice.series_uid,
                    "bench",
                    f"{version}-now",
                    run.model_sha256,
                    lesions,
                )
                results_now.append(time.perf_counter() - clock)
                clock = time.perf_counter()
                measured = measure_lesions(run.mask, volume.spacing)
                patient = resolve_patient(settings, str(tags["PatientID"]), fhir=fhir, emr=emr)
                assert patient.resource is not None
                findings = LesionFindings(
                    f"Patient/{patient.resource['id']}",
                    study_uid,
                    choice.series_uid,
                    "bench",
                    version,
                    lesion_count=measured.count,
                    volume_ml=measured.volume_ml,
                )
                publish_lesion_results(fhir, findings)
                rows["fhir"].append(time.perf_counter() - clock)
        medians = {k: statistics.median(v) for k, v in rows.items()}
        total = sum(medians.values())
        print(
            f"warm, without Prefect, median of {repeats}: "
            + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in medians.items())
            + f"; study end to end {total:.2f} s"
        )
        before = medians["seg"]
        now = statistics.median(results_now)
        print(
            f"DICOM results, median of {repeats}: before (one segment, no SR) {before:.2f} s, "
            f"now (a segment per lesion + TID 1500 SR, both checked) {now:.2f} s; the whole "
            f"reading now/before: {(total - before + now) / total:.3f} (target ≤ 1.10)"
        )
        segmentation_by_device(volume, devices, repeats)
    finally:
        stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=1.0, help="mm; 1.0: 189x233x197")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--in-memory", action="store_true", help="no Orthanc/FHIR (GPU machine)")
    args = parser.parse_args()
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    with tempfile.TemporaryDirectory(prefix="nn-bench-inference-") as tmp:
        files, _mask = write_sample_mr_study(Path(tmp) / "study", spacing_mm=args.spacing)
        if args.in_memory:
            in_memory(files, devices, args.repeats)
        else:
            with_stack(Path(tmp), files, devices, args.repeats)


if __name__ == "__main__":
    main()
