"""The AI result as DICOM SEG: valid for dciodvfy, referencing its sources, the mask kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuronova.sample_mr import write_sample_mr_study
from tasks.dicom.seg import NOT_FOR_CLINICAL_USE, build_lesion_seg, frames_to_store

DCIODVFY = Path(sys.executable).parent / "dciodvfy"


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], np.ndarray]:
    folder = tmp_path_factory.mktemp("seg")
    files, mask_path = write_sample_mr_study(folder / "study")
    mask = np.load(mask_path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seg = build_lesion_seg(
        sources,
        mask,
        algorithm_name="NeuroNova brain lesion segmentation",
        algorithm_version="0.1.0",
    )
    path = folder / "seg.dcm"
    seg.save_as(path)
    return path, files, mask


def test_dciodvfy_finds_no_error(seg_file: tuple[Path, list[Path], np.ndarray]) -> None:
    path, _, _ = seg_file
    tool = str(DCIODVFY) if DCIODVFY.exists() else shutil.which("dciodvfy")
    assert tool, "dciodvfy is missing: make setup"
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert "Segmentation" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


def test_the_seg_names_the_algorithm_and_its_sources(
    seg_file: tuple[Path, list[Path], np.ndarray],
) -> None:
    path, files, mask = seg_file
    seg = pydicom.dcmread(path)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert (
        NOT_FOR_CLINICAL_USE in seg.ContentDescription
        and NOT_FOR_CLINICAL_USE in seg.SeriesDescription
    )
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
        "NeuroNova brain lesion segmentation",
        "0.1.0",
    )
    referenced = {
        r.ReferencedSOPInstanceUID
        for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    with_lesion = int((mask.reshape(len(files), -1).any(axis=1)).sum())
    # Only slices with lesions, unless OHIF's reader needs an even length (frames_to_store).
    expected = with_lesion if frames_to_store(mask) is None else len(frames_to_store(mask) or [])
    assert int(seg.NumberOfFrames) == expected


def test_the_mask_comes_back_from_the_seg(seg_file: tuple[Path, list[Path], np.ndarray]) -> None:
    path, files, mask = seg_file
    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], ignore_spatial_locations=True
    )
    assert np.array_equal(pixels[..., 0].astype(np.uint8), mask)


@pytest.mark.parametrize(
    ("shape", "lesion_slices", "expected"),
    [
        ((5, 16, 16), [1, 2], None),  # 2 frames of 32 bytes: even, nothing to add
        ((5, 116, 98), [1, 2], None),  # 2 frames of 1421 bytes: even
        ((6, 116, 98), [1, 2, 3], [0, 1, 2, 3, 4, 5]),  # 3 x 1421 is odd: all 6 slices
        ((5, 116, 98), [1, 2, 3], [0, 1, 2, 3]),  # ... or, of 5, one empty slice added
        ((5, 116, 98), [], [0, 1]),  # no lesion: two empty frames rather than one
        ((5, 15, 15), [1, 2, 3], None),  # frames do not fill whole bytes: read bit by bit
    ],
)
def test_frames_are_chosen_so_ohif_can_read_the_seg(
    shape: tuple[int, int, int], lesion_slices: list[int], expected: list[int] | None
) -> None:
    mask = np.zeros(shape, dtype=np.uint8)
    for index in lesion_slices:
        mask[index, 3:6, 3:6] = 1
    assert frames_to_store(mask) == expected
