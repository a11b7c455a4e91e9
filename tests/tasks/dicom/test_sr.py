"""The AI result as a TID 1500 Comprehensive 3D SR: valid for dciodvfy, a volumetric group per
lesion referencing its SEG segment and a planar group on its key slice, tracking UIDs stable
across runs, volumes equal to the SEG's voxels; "no lesion" said when there is none."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from neuronova.sample_mr import write_sample_mr_study
from tasks.dicom.seg import WrittenObjectInvalid, check_written_seg
from tasks.dicom.sr import (
    OHIF_LENGTH,
    ModelIdentity,
    check_written_report,
    planar_tracking_uid,
)
from tests.support.ai_reading import read_with_mask

DCIODVFY = Path(sys.executable).parent / "dciodvfy"
MODEL = ModelIdentity("NeuroNova brain lesion segmentation", "0.1.0", "ab" * 32)


def _reading(folder: Path, *, second_lesion: bool = True, lesions: bool = True) -> dict[str, Any]:
    files, mask_path = write_sample_mr_study(folder / "study")
    mask = np.load(mask_path)
    if second_lesion:
        mask[60:63, 40:45, 40:45] = 1
    if not lesions:
        mask[:] = 0
    reading = read_with_mask(files, mask, MODEL)
    path = folder / "sr.dcm"
    reading.sr.save_as(path)
    return {"path": path, "sources": reading.sources, "labels": reading.labels,
            "lesions": reading.lesions, "uids": reading.tracking_uids,
            "spacing": reading.spacing, "seg": reading.seg}  # fmt: skip


@pytest.fixture(scope="module")
def reading(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _reading(tmp_path_factory.mktemp("sr"))


def _texts(item: Any) -> dict[str, set[str]]:
    """Every TEXT content item below `item`, by its concept name."""
    found: dict[str, set[str]] = {}
    for child in getattr(item, "ContentSequence", []):
        if child.get("ValueType") == "TEXT":
            found.setdefault(child.ConceptNameCodeSequence[0].CodeMeaning, set()).add(
                child.TextValue
            )
        for name, values in _texts(child).items():
            found.setdefault(name, set()).update(values)
    return found


def _dciodvfy(path: Path) -> list[str]:
    tool = str(DCIODVFY) if DCIODVFY.exists() else shutil.which("dciodvfy")
    assert tool, "dciodvfy is missing: make setup"
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert "Comprehensive 3D SR" in report or "Comprehensive3DSR" in report.replace(" ", ""), report
    return report.splitlines()


def test_dciodvfy_finds_no_error(reading: dict[str, Any]) -> None:
    lines = _dciodvfy(reading["path"])
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)
    for line in lines:
        if line.startswith("Warning"):
            print(line)  # listed in the closing note


def test_each_lesion_has_a_volumetric_group_on_its_segment(reading: dict[str, Any]) -> None:
    sr = hd.sr.srread(reading["path"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Lesion 1", "Lesion 2"]
    assert [g.tracking_uid for g in groups] == reading["uids"]
    voxel_ml = float(np.prod(reading["spacing"])) / 1000
    for number, group in enumerate(groups, start=1):
        segment = group.referenced_segment
        assert segment is not None and segment.referenced_segment_numbers == [number]
        assert segment.referenced_sop_instance_uid == reading["seg"].SOPInstanceUID
        [volume] = group.get_measurements(name=codes.SCT.Volume)
        assert volume.unit.value == "mL"
        seg_ml = np.count_nonzero(reading["labels"] == number) * voxel_ml
        assert volume.value == pytest.approx(seg_ml, rel=0.01)
        assert group.finding_sites[0].value == codes.SCT.Brain
        [evaluation] = group.get_qualitative_evaluations(name=codes.SCT.Lesion)
        assert evaluation.value == codes.SCT.Present
        texts = _texts(group[0])
        assert texts["Algorithm Name"] == {MODEL.name}
        assert texts["Algorithm Version"] == {MODEL.version}
        assert f"bundle sha256 {MODEL.bundle_sha256}" in texts["Algorithm Parameters"]


def test_each_lesion_has_an_outline_on_its_key_slice(reading: dict[str, Any]) -> None:
    sr = hd.sr.srread(reading["path"])
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "Lesion 1 (key slice)",
        "Lesion 2 (key slice)",
    ]
    assert [g.tracking_uid for g in groups] == [planar_tracking_uid(u) for u in reading["uids"]]
    for lesion, group in zip(reading["lesions"], groups, strict=True):
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        assert np.array_equal(points[0], points[-1])  # closed
        key = reading["sources"][lesion.key_slice]
        [source] = region.ContentSequence
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
        # Every pixel of the lesion on that slice lies inside the outline's box.
        rows, columns = np.nonzero(reading["labels"][lesion.key_slice] == lesion.number)
        assert points[:, 0].min() <= columns.min() and points[:, 0].max() >= columns.max() + 1
        assert points[:, 1].min() <= rows.min() and points[:, 1].max() >= rows.max() + 1
        [diameter] = group.get_measurements(name=codes.SCT.LongAxis)
        extent_mm = (columns.max() - columns.min() + 1) * float(key.PixelSpacing[1])
        assert extent_mm <= diameter.value <= 2 * extent_mm + 1


def test_each_lesion_has_a_group_that_ohifs_measurement_panel_lists(
    reading: dict[str, Any],
) -> None:
    """OHIF 3.x takes a Length of its own tool's identifier, with the coordinates inside the
    measurement, titled by a Comment; the lesion's Tracking UID merges it with its volume."""
    sr = hd.sr.srread(reading["path"])
    groups = [
        g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier == OHIF_LENGTH
    ]
    assert [g.tracking_uid for g in groups] == list(reading["uids"])
    for lesion, group in zip(reading["lesions"], groups, strict=True):
        [diameter] = group.get_measurements(name=codes.SCT.LongAxis)
        assert diameter.unit == codes.UCUM.Millimeter
        [coordinates] = diameter.referenced_coordinates or []
        assert coordinates.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert coordinates.value.shape == (2, 2)  # the diameter's two ends
        key = reading["sources"][lesion.key_slice]
        [source] = coordinates.ContentSequence
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
        titles = [
            item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
        ]
        assert titles == [f"{lesion.label} \u2014 {lesion.volume_ml:.1f} mL"]


def test_tracking_uids_are_the_same_when_the_same_model_reads_the_series_again(
    reading: dict[str, Any], tmp_path: Path
) -> None:
    again = _reading(tmp_path)
    first = hd.sr.srread(reading["path"]).content.get_volumetric_roi_measurement_groups()
    second = hd.sr.srread(again["path"]).content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_uid for g in first] == [g.tracking_uid for g in second]
    assert (
        hd.sr.srread(reading["path"]).SOPInstanceUID
        == pydicom.dcmread(again["path"]).SOPInstanceUID
    )


def test_a_reading_without_lesions_says_so(tmp_path: Path) -> None:
    empty = _reading(tmp_path, lesions=False)
    assert [line for line in _dciodvfy(empty["path"]) if line.startswith("Error")] == []
    sr = hd.sr.srread(empty["path"])
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    assert sr.content.get_planar_roi_measurement_groups() == []
    [group] = sr.content.get_image_measurement_groups()  # no region: the whole reading
    assert group.tracking_identifier == "Whole reading"
    [evaluation] = group.get_qualitative_evaluations(name=codes.SCT.Lesion)
    assert evaluation.value == codes.SCT.Absent


def test_what_was_written_is_checked_before_it_is_stored(reading: dict[str, Any]) -> None:
    seg, uids = reading["seg"], reading["uids"]
    seg_bytes = io.BytesIO()
    seg.save_as(seg_bytes)
    sr_bytes = reading["path"].read_bytes()
    check_written_seg(seg_bytes.getvalue(), uids)
    check_written_report(sr_bytes, uids, seg.SOPInstanceUID)
    with pytest.raises(WrittenObjectInvalid, match="segments are"):
        check_written_seg(seg_bytes.getvalue(), list(reversed(uids)))
    with pytest.raises(WrittenObjectInvalid, match="groups track"):
        check_written_report(sr_bytes, uids[:1], seg.SOPInstanceUID)
    with pytest.raises(WrittenObjectInvalid, match="does not reference its segment"):
        check_written_report(sr_bytes, uids, "1.2.3.4")
    with pytest.raises(WrittenObjectInvalid, match="does not read back"):
        check_written_report(b"not DICOM at all", uids, seg.SOPInstanceUID)


def test_a_single_lesion_seg_is_checked_too(tmp_path: Path) -> None:
    # One segment: highdicom names it once for all frames, not frame by frame.
    one = _reading(tmp_path, second_lesion=False)
    data = io.BytesIO()
    one["seg"].save_as(data)
    check_written_seg(data.getvalue(), one["uids"])
    check_written_report(one["path"].read_bytes(), one["uids"], one["seg"].SOPInstanceUID)
