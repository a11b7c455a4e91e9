"""HTJ2K codec speed next to its baselines, measured side by side on the same pixels.

For each real image from pydicom-data (a 512² CT, a 1024² MR, a 1955×1841 CR):
  1. our HTJ2K encode (tasks.dicom.htj2k) vs JPEG 2000 Lossless encode through pydicom
     (`Dataset.compress`, pylibjpeg-openjpeg);
  2. our HTJ2K decode vs JPEG 2000 Lossless decode through pydicom;
  3. our HTJ2K decode vs pydicom's default HTJ2K decode path (pylibjpeg-openjpeg);
plus the compression ratio of each and the time of a whole `transcode_to_htj2k` (decode,
encode, decode again, compare, write). Speeds are MB/s of raw pixel bytes, from the median
of --repeat runs; every codec runs on one thread.

    .venv/bin/python bench/bench_codec.py [--repeat N]
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000Lossless

from tasks.dicom.htj2k import HTJ2K_LOSSLESS, decode_frame, encode_frame
from tasks.dicom.transcode import transcode_to_htj2k

IMAGES = ("693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm")
TARGETS = {"encode vs J2K": 10.0, "decode vs J2K": 10.0, "decode vs pydicom HTJ2K": 2.0}


@dataclass(frozen=True)
class Timing:
    """Median and best seconds of one operation."""

    median_s: float
    best_s: float


def measure(
    operation: Callable[[], object], repeat: int, setup: Callable[[], None] | None = None
) -> Timing:
    """Run `operation` once to warm up, then `repeat` times; `setup` runs untimed before each."""
    if setup is not None:
        setup()
    operation()
    seconds = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        operation()
        seconds.append(time.perf_counter() - start)
    return Timing(statistics.median(seconds), min(seconds))


def bench_image(name: str, repeat: int) -> dict[str, float]:
    """Measure every codec on one image; print its rows and return the ratios."""
    path = get_testdata_file(name)
    if path is None:
        raise SystemExit(f"{name} is missing: install pydicom-data")
    raw = Path(path).read_bytes()
    source = dcmread(path)
    pixels = source.pixel_array
    megabytes = pixels.nbytes / 1e6
    bits = int(source.BitsStored)

    ours = encode_frame(pixels, bits)
    j2k = _j2k_dataset(source, pixels)
    j2k_size = len(next(generate_frames(j2k.PixelData, number_of_frames=1)))
    transcoded = dcmread_bytes(transcode_to_htj2k(source, bytes_in=len(raw)).data)
    assert transcoded.file_meta.TransferSyntaxUID == HTJ2K_LOSSLESS
    np.testing.assert_array_equal(decode_frame(ours), pixels)

    copies: list[Dataset] = []
    timings = {
        "encode HTJ2K (ours)": measure(lambda: encode_frame(pixels, bits), repeat),
        "encode J2K (pydicom)": measure(
            lambda: copies.pop().compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg"),
            repeat,
            setup=lambda: copies.append(copy.deepcopy(source)),
        ),
        "decode HTJ2K (ours)": measure(lambda: decode_frame(ours), repeat),
        "decode J2K (pydicom)": measure(
            lambda: get_decoder(JPEG2000Lossless).as_array(j2k), repeat
        ),
        "decode HTJ2K (pydicom)": measure(
            lambda: get_decoder(HTJ2K_LOSSLESS).as_array(transcoded), repeat
        ),
    }
    sizes = {"HTJ2K": len(ours), "J2K": j2k_size}
    transcode = measure(lambda: transcode_to_htj2k(source, bytes_in=len(raw)), repeat)

    print(f"\n{name}: {pixels.shape[1]}x{pixels.shape[0]}, {pixels.dtype}, Bits Stored {bits}")
    print(f"  {'operation':26s} {'MB/s':>9s} {'median ms':>10s} {'best ms':>9s}")
    for label, timing in timings.items():
        speed = megabytes / timing.median_s
        print(
            f"  {label:26s} {speed:9.1f} {timing.median_s * 1e3:10.2f} {timing.best_s * 1e3:9.2f}"
        )
    for codec, size in sizes.items():
        print(f"  compression ratio {codec:8s} {pixels.nbytes / size:6.2f}  ({size} bytes)")
    print(f"  HTJ2K size / J2K size      {sizes['HTJ2K'] / sizes['J2K']:6.3f}")
    print(f"  transcode_to_htj2k, whole instance incl. verify: {transcode.median_s * 1e3:.2f} ms")

    def speedup(ours_label: str, baseline_label: str) -> float:
        return timings[baseline_label].median_s / timings[ours_label].median_s

    return {
        "encode vs J2K": speedup("encode HTJ2K (ours)", "encode J2K (pydicom)"),
        "decode vs J2K": speedup("decode HTJ2K (ours)", "decode J2K (pydicom)"),
        "decode vs pydicom HTJ2K": speedup("decode HTJ2K (ours)", "decode HTJ2K (pydicom)"),
    }


def _j2k_dataset(source: Dataset, pixels: np.ndarray) -> Dataset:
    """A copy of `source` compressed as JPEG 2000 Lossless by pydicom."""
    j2k = copy.deepcopy(source)
    j2k.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
    return j2k


def dcmread_bytes(data: bytes) -> Dataset:
    """Parse a Part 10 file held in memory."""
    return dcmread(io.BytesIO(data))


def main() -> int:
    """Run the benchmark and print the ratios against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per operation (median)")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help="pydicom-data file names")
    args = parser.parse_args()

    ratios = [bench_image(name, args.repeat) for name in args.images]
    print("\nours / baseline (median speed ratio; target)")
    failed = False
    for key, target in TARGETS.items():
        values = [ratio[key] for ratio in ratios]
        verdict = "ok" if min(values) >= target else "BELOW TARGET"
        failed |= min(values) < target
        shown = ", ".join(f"{value:.1f}x" for value in values)
        print(f"  {key:26s} {shown}  (target >= {target:.0f}x: {verdict})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
