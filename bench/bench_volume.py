"""Volume read benchmark: an HTJ2K series → one NumPy volume, ours vs pydicom's default path.

The same synthetic brain MR series (1 mm: 189 slices 233x197, transcoded to HTJ2K by our
ingest), read twice per round, alternating:

- from Orthanc (started here in a temporary folder): ours (`read_series_from_orthanc`: one
  request for positions, one for the tags, every file fetched with 8 threads and its
  codestream cut out without parsing the dataset, decoded by OpenJPH into one preallocated
  array) vs the usual path (every file fetched with the same 8 threads, `pydicom.dcmread` +
  `pixel_array`, `numpy.stack` in position order);
- from the same files in memory: ours (`volume_from_files`: a few attributes scanned without
  pydicom, codestreams cut out and decoded into place) vs `dcmread` + `pixel_array`.

Every result is compared with the others before timing.

    .venv/bin/python bench/bench_volume.py [--repeats 5] [--spacing 1.0]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom

from common.db import migrate
from neuronova.sample_mr import write_sample_mr_study
from neuronova.stack.components import ORTHANC
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.transcode import transcode_to_htj2k
from tasks.dicom.volume import read_series_from_orthanc, volume_from_files
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import collect_inputs


def pydicom_volume(blobs: list[bytes]) -> np.ndarray:
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in blobs]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in datasets])


def median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--spacing", type=float, default=1.0, help="mm; 1.0 gives 189 slices 233x197"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nn-bench-volume-") as tmp:
        files, _ = write_sample_mr_study(Path(tmp) / "study", spacing_mm=args.spacing)
        blobs = []
        for path in files:
            data = path.read_bytes()
            blobs.append(
                transcode_to_htj2k(pydicom.dcmread(path), bytes_in=len(data), source=data).data
            )
        settings = settings_on_free_ports(Path(tmp) / "var")
        stack = LocalStack(settings, components=(ORTHANC,))
        try:
            stack.up()
            migrate(settings.resolved_database_url)
            ingest_batch(settings, collect_inputs(Path(tmp) / "study"))
            with OrthancClient.from_settings(settings) as client:
                series_id = client.lookup(pydicom.dcmread(files[0]).SeriesInstanceUID, "Series")
                assert series_id is not None
                ids = [i["ID"] for i in client.series_instances(series_id)]

                def ours_orthanc() -> np.ndarray:
                    return read_series_from_orthanc(client, series_id).pixels

                def usual_orthanc() -> np.ndarray:
                    with ThreadPoolExecutor(max_workers=8) as pool:
                        return pydicom_volume(list(pool.map(client.get_instance_file, ids)))

                reference = volume_from_files(blobs).pixels
                for run in (ours_orthanc, usual_orthanc, lambda: pydicom_volume(blobs)):
                    assert np.array_equal(run(), reference), "the read paths disagree"
                orthanc_ours, orthanc_usual = (
                    median_ms(f, args.repeats) for f in (ours_orthanc, usual_orthanc)
                )
        finally:
            stack.down()
    memory_ours = median_ms(lambda: volume_from_files(blobs), args.repeats)
    memory_usual = median_ms(lambda: pydicom_volume(blobs), args.repeats)
    mb = reference.nbytes / 1e6
    print(
        f"{len(blobs)} HTJ2K slices {reference.shape[1]}x{reference.shape[2]} ({mb:.1f} MB), median of {args.repeats}:"
    )
    print(
        f"  from Orthanc: ours {orthanc_ours:6.1f} ms, fetch files + dcmread + pixel_array {orthanc_usual:6.1f} ms"
        f"  → {orthanc_usual / orthanc_ours:.1f}x"
    )
    print(
        f"  in memory:    ours {memory_ours:6.1f} ms, dcmread + pixel_array {memory_usual:6.1f} ms"
        f"  → {memory_usual / memory_ours:.1f}x"
    )


if __name__ == "__main__":
    main()
