"""A reader's corrected segmentation: the SEG a radiologist edited in the viewer and saved.

What may be saved (checked before anything is stored, `check_correction`): one DICOM SEG of the
viewer token's study and patient, whose referenced images are all the archive index's images of
that study, segmenting the MR series an AI reading read, in a series of its own (not the AI's
SEG series). What it measures (`segment_volumes`): each segment's volume in mL from its voxels
and the SEG's own pixel measures, matched to the reading's findings by Tracking UID, else by
label ("Lesion 2"); a segment the reader added keeps its label. These corrected SEGs are the
ground truth the model's monitoring uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlmodel import Session, col, select

from common.db import InferenceFinding, InferenceResult, Instance, Study
from common.errors import NeuroNovaError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class CorrectionRefused(NeuroNovaError):
    """A file that cannot be a reader's corrected SEG; `status` is the answer (400 not what
    may be saved, 403 outside the token's study)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Correction:
    """A checked corrected SEG: the reading it corrects and what it measures."""

    reading_id: int
    sop_instance_uid: str
    volumes_ml: dict[str, float]  # finding Tracking UID (or a new segment's label) → mL

    def volumes_json(self) -> str:
        return json.dumps(self.volumes_ml, sort_keys=True)


def check_correction(session: Session, path: Path, token_study: str) -> Correction:
    """The correction `path` holds, for the token's study; CorrectionRefused otherwise."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise CorrectionRefused(400, f"not a DICOM file: {type(err).__name__}") from err
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise CorrectionRefused(
            400, "only a segmentation (SEG) may be saved from the viewer, not this SOP class"
        )
    if str(ds.get("StudyInstanceUID", "")) != token_study:
        raise CorrectionRefused(403, "another study than the viewer's")
    study = session.get(Study, token_study)
    if study is None or str(ds.get("PatientID", "")) != study.patient_id:
        raise CorrectionRefused(403, "another patient than the study's")
    referenced = _referenced_images(ds)
    if not referenced:
        raise CorrectionRefused(400, "the SEG references no image of the study")
    known = {
        (i.series_instance_uid, i.sop_instance_uid)
        for i in session.exec(select(Instance).where(Instance.study_instance_uid == token_study))
    }
    if not referenced <= known:
        raise CorrectionRefused(403, "the SEG references images outside the viewer's study")
    series = {series for series, _ in referenced}
    reading = session.exec(
        select(InferenceResult)
        .where(
            InferenceResult.study_instance_uid == token_study,
            col(InferenceResult.series_instance_uid).in_(series),
        )
        .order_by(col(InferenceResult.id).desc())
    ).first()
    if reading is None or reading.id is None:
        raise CorrectionRefused(400, "no AI reading of the series this SEG segments")
    if str(ds.SeriesInstanceUID) in (reading.seg_series_uid, reading.sr_series_uid):
        raise CorrectionRefused(400, "a corrected SEG is a new series, not the AI's own")
    findings = list(
        session.exec(select(InferenceFinding).where(InferenceFinding.result_id == reading.id))
    )
    volumes = matched_volumes(ds, findings)
    return Correction(reading.id, str(ds.SOPInstanceUID), volumes)


def _referenced_images(ds: Dataset) -> set[tuple[str, str]]:
    """(series, SOP instance) of every image the SEG says it segments."""
    found: set[tuple[str, str]] = set()
    for series in ds.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            found.add((str(series.SeriesInstanceUID), str(instance.ReferencedSOPInstanceUID)))
    return found


def segment_volumes(ds: Dataset) -> dict[int, float]:
    """Each segment's volume in mL: its voxels (BINARY: set; FRACTIONAL: weighted) times the
    voxel size of the SEG's shared pixel measures."""
    try:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        row_mm, column_mm = (float(v) for v in measures.PixelSpacing)
        depth_mm = float(measures.get("SpacingBetweenSlices") or measures.SliceThickness)
        per_frame = ds.PerFrameFunctionalGroupsSequence
        pixels = ds.pixel_array
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise CorrectionRefused(
            400, f"the SEG's pixel measures or frames cannot be read: {err}"
        ) from err
    frames = pixels.reshape(-1, *pixels.shape[-2:]).astype(np.float64)
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        frames /= float(ds.get("MaximumFractionalValue", 255))
    voxel_ml = row_mm * column_mm * depth_mm / 1000.0
    volumes: dict[int, float] = {int(s.SegmentNumber): 0.0 for s in ds.SegmentSequence}
    for index, group in enumerate(per_frame):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        volumes[number] = volumes.get(number, 0.0) + float(frames[index].sum()) * voxel_ml
    return volumes


def matched_volumes(ds: Dataset, findings: list[InferenceFinding]) -> dict[str, float]:
    """The segments' volumes keyed by the finding each one is (Tracking UID, else label)."""
    by_uid = {f.tracking_uid: f for f in findings}
    by_label = {f.label: f for f in findings}
    volumes = segment_volumes(ds)
    matched: dict[str, float] = {}
    for segment in ds.SegmentSequence:
        volume = round(volumes.get(int(segment.SegmentNumber), 0.0), 3)
        uid = str(segment.get("TrackingUID", ""))
        label = str(segment.get("SegmentLabel", ""))
        finding = by_uid.get(uid) or by_label.get(label)
        matched[
            finding.tracking_uid if finding else label or f"segment {segment.SegmentNumber}"
        ] = volume
    for finding in findings:  # a lesion the reader removed measures nothing
        matched.setdefault(finding.tracking_uid, 0.0)
    return matched
