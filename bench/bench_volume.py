"""Volume decode benchmark: our HTJ2K series → NumPy volume vs pydicom's default path.

The same HTJ2K files (a synthetic brain MR series, transcoded by our ingest code) read twice in
one run: ours (`tasks.volume.volume_from_files`: OpenJPH decoding each slice into its place in
one preallocated array, 4 threads, slices ordered by position) and the baseline every DICOM
tool starts from (`pydicom.dcmread` + `pixel_array` per file, then `numpy.stack` in position
order). Both results are compared for equality before timing.

    .venv/bin/python bench/bench_volume.py [--repeats 5] [--spacing 1.0]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from neuronova.sample_mr import write_sample_mr_study
from tasks.transcode import transcode_to_htj2k
from tasks.volume import volume_from_files


def pydicom_volume(blobs: list[bytes]) -> np.ndarray:
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in blobs]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in datasets])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--spacing", type=float, default=1.0, help="mm; 1.0 gives 189 slices 233x197"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files, _ = write_sample_mr_study(Path(tmp) / "study", spacing_mm=args.spacing)
        blobs = []
        for path in files:
            data = path.read_bytes()
            blobs.append(
                transcode_to_htj2k(pydicom.dcmread(path), bytes_in=len(data), source=data).data
            )
    ours_volume = volume_from_files(blobs).pixels
    assert np.array_equal(ours_volume, pydicom_volume(blobs)), "the two paths disagree"
    timings: dict[str, list[float]] = {"ours": [], "pydicom": []}
    for _ in range(args.repeats):
        for name, run in (
            ("ours", lambda: volume_from_files(blobs)),
            ("pydicom", lambda: pydicom_volume(blobs)),
        ):
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    ours, base = statistics.median(timings["ours"]), statistics.median(timings["pydicom"])
    mb = ours_volume.nbytes / 1e6
    print(f"{len(blobs)} HTJ2K slices {ours_volume.shape[1]}x{ours_volume.shape[2]} ({mb:.1f} MB decoded), "
          f"median of {args.repeats}:")  # fmt: skip
    print(f"  ours (OpenJPH into place, 4 threads): {ours * 1000:7.1f} ms  ({mb / ours:6.0f} MB/s)")
    print(f"  pydicom dcmread + pixel_array:        {base * 1000:7.1f} ms  ({mb / base:6.0f} MB/s)")
    print(f"  speed-up {base / ours:.1f}x")


if __name__ == "__main__":
    main()
