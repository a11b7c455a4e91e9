"""The AI result as DICOM SEG, a segment per lesion: valid for dciodvfy, referencing its
sources, each lesion's voxels kept in its own segment with its tracking identifier and UID."""

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
from tasks.inference.lesions import label_lesions

DCIODVFY = Path(sys.executable).parent / "dciodvfy"


TRACKING_UIDS = ("1.2.826.0.1.3680043.10.1245.1", "1.2.826.0.1.3680043.10.1245.2")


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], np.ndarray]:
    """The sample MR's lesion and a second, smaller one far from it: two segments."""
    folder = tmp_path_factory.mktemp("seg")
    files, mask_path = write_sample_mr_study(folder / "study")
    mask = np.load(mask_path)
    assert not mask[60:63, 40:45, 40:45].any()
    mask[60:63, 40:45, 40:45] = 1
    labels, lesions = label_lesions(mask, (1.0, 1.0, 1.0))
    assert len(lesions) == 2
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seg = build_lesion_seg(
        sources,
        labels,
        algorithm_name="NeuroNova brain lesion segmentation",
        algorithm_version="0.1.0",
        tracking_uids=TRACKING_UIDS,
    )
    path = folder / "seg.dcm"
    seg.save_as(path)
    return path, files, labels


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
    for number, segment in enumerate(seg.SegmentSequence, start=1):
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
            "NeuroNova brain lesion segmentation",
            "0.1.0",
        )
        assert segment.SegmentNumber == number
        assert segment.SegmentLabel == segment.TrackingID == f"Lesion {number}"
        assert segment.TrackingUID == TRACKING_UIDS[number - 1]
    assert len(seg.SegmentSequence) == 2
    referenced = {
        r.ReferencedSOPInstanceUID
        for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    # Each segment's slices with its voxels, unless OHIF's reader needs an even length.
    per_segment = sum(int(np.any(mask == n, axis=(1, 2)).sum()) for n in (1, 2))
    chosen = frames_to_store(mask)
    expected = per_segment if chosen is None else 2 * len(chosen)
    assert int(seg.NumberOfFrames) == expected


def test_the_mask_comes_back_from_the_seg(seg_file: tuple[Path, list[Path], np.ndarray]) -> None:
    path, files, mask = seg_file
    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], ignore_spatial_locations=True
    )
    for number in (1, 2):
        assert np.array_equal(pixels[..., number - 1].astype(bool), mask == number), number


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


@pytest.mark.parametrize(
    ("lesions", "expected"),
    [
        # 1421-byte frames; lesion n on the slices listed (each its own segment).
        ({1: [1], 2: [3]}, None),  # 1 + 1 frames: even
        ({1: [1, 2], 2: [3]}, [1, 2, 3]),  # 3 odd: 2 segments x 3 slices (empty frames kept)
        ({1: [1], 2: [3], 3: [4]}, [1, 3, 4, 0]),  # 3 segments x an even number of slices
    ],
)
def test_frames_for_several_segments_keep_ohifs_reader_happy(
    lesions: dict[int, list[int]], expected: list[int] | None
) -> None:
    labels = np.zeros((5, 116, 98), dtype=np.uint16)
    for number, slices in lesions.items():
        for index in slices:
            labels[index, 3 * number : 3 * number + 2, 3:6] = number
    chosen = frames_to_store(labels)
    assert chosen == (sorted(expected) if expected is not None else None)
    if chosen is not None:
        assert (int(labels.max()) * len(chosen) * 116 * 98 // 8) % 2 == 0
