"""The AI result as a TID 1500 Imaging Measurement Report in a Comprehensive 3D SR (highdicom),
the IHE AI Results way: what any PACS, viewer or reporting system reads.

- Observation context: the model as a device observer (its name, version, a UID of our own for
  the version, manufacturer NeuroNova).
- Per lesion (tasks/inference/lesions.py numbers them, largest first):
  - first, the viewer's group (TID 1501): OHIF 3.x lists in its measurement panel only groups
    whose Tracking Identifier names one of its own tools (`Cornerstone3DTools@^0.1.0:Length`)
    and whose measurement carries its coordinates inside it; so this group is a Length: the
    lesion's longest in-plane diameter on its key slice (NUM "Long axis" in mm, INFERRED FROM
    the two end points as a POLYLINE), the finding (lesion, brain) and a Comment that OHIF
    shows as the row's title ("Lesion 1 — 4.2 mL"). It has the lesion's Tracking UID, which
    makes OHIF merge it with the volumetric group below instead of failing on a group without
    coordinates (OHIF issue #3390), and a click on the row goes to the key slice;
  - a volumetric group (TID 1411) that references its SEG segment, with its Tracking Identifier
    ("Lesion n") and Tracking UID (the SEG segment's), the volume in mL, the finding site
    (brain), the algorithm (TID 4019: name, version, the bundle's SHA-256 as a parameter), and
    "Lesion: present";
  - a planar group (TID 1410) on the lesion's key slice with its outline (a closed POLYLINE in
    image coordinates: the convex hull of its pixels there) and its longest in-plane diameter
    in mm, under a Tracking UID of its own (what other viewers and reporting systems draw).
- No lesion: one measurement group without a region (TID 1501), "Whole reading", saying
  "Lesion: absent" (highdicom writes a report with at least one group; TID 1500's report-level
  Qualitative Evaluations container is not among what it writes).

It stays "preliminary" (not verified, not final): a radiologist's verdict is recorded elsewhere.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import highdicom as hd
import numpy as np
from highdicom.sr.coding import CodedConcept
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from scipy.spatial import ConvexHull, QhullError

from tasks.dicom.seg import NOT_FOR_CLINICAL_USE, WrittenObjectInvalid

SR_SERIES_NUMBER = 9002
# The Tracking Identifier of OHIF's Length tool: the one form of group OHIF's measurement panel
# takes from a report it did not write (its cornerstone-dicom-sr extension's isRehydratable).
OHIF_LENGTH = "Cornerstone3DTools@^0.1.0:Length"
MILLILITER = CodedConcept("mL", "UCUM", "milliliter")
MR_BRAIN = CodedConcept("24590-2", "LN", "MR Brain")


class Lesion(Protocol):
    """What the report needs of a finding (tasks/inference/lesions.py's Lesion)."""

    @property
    def number(self) -> int: ...  # its SEG segment, 1 = largest
    @property
    def label(self) -> str: ...
    @property
    def volume_ml(self) -> float: ...
    @property
    def key_slice(self) -> int: ...


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    bundle_sha256: str

    @property
    def device_uid(self) -> str:
        """A UID of our own for this model version (the same bundle, the same UID)."""
        return str(generate_uid(entropy_srcs=["neuronova-model", self.name, self.version]))

    def algorithm(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.name[:64],
            version=self.version[:64],
            parameters=[f"bundle sha256 {self.bundle_sha256}"],
        )


def planar_tracking_uid(tracking_uid: str) -> str:
    """The key-slice group's own Tracking UID, derived from its lesion's."""
    return str(generate_uid(entropy_srcs=[tracking_uid, "key-slice"]))


def build_measurement_report(
    sources: Sequence[Dataset],
    seg: Dataset,
    labels: np.ndarray,
    lesions: Sequence[Lesion],
    tracking_uids: Sequence[str],
    model: ModelIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> hd.sr.Comprehensive3DSR:
    """The SR for `sources` (the MR slices read, in `labels`' order) and their SEG (segment n
    holds lesion n); `tracking_uids[n - 1]` is lesion n's (the SEG's)."""
    if len(tracking_uids) < len(lesions):
        raise ValueError(f"{len(lesions)} lesions but {len(tracking_uids)} tracking UIDs")
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    if not lesions:
        groups.append(_no_lesion_group(series_instance_uid, model))
    for lesion in lesions:
        uid = tracking_uids[lesion.number - 1]
        key_source = sources[lesion.key_slice]
        outline = lesion_outline(labels[lesion.key_slice] == lesion.number)
        if outline is not None:
            groups.append(_viewer_group(lesion, uid, outline, key_source, model))
        groups.append(_volumetric_group(lesion, uid, seg, sources, model))
        if outline is not None:
            groups.append(_planar_group(lesion, uid, outline, key_source, model))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid,
            name=model.name[:64],
            manufacturer_name="NeuroNova",
            model_name=model.name[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=MR_BRAIN,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=[sources[lesion.key_slice] for lesion in lesions] or None,
    )
    first = sources[0]
    # The evidence is what the content refers to by instance: the key slices and the SEG (the
    # series read is named by its UID in each volumetric group).
    key_slices = {id(sources[lesion.key_slice]): sources[lesion.key_slice] for lesion in lesions}
    return hd.sr.Comprehensive3DSR(
        evidence=[*key_slices.values(), seg],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="NeuroNova",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"AI findings ({NOT_FOR_CLINICAL_USE})"[:64],
        institution_name=first.get("InstitutionName"),
    )


def _volumetric_group(
    lesion: Lesion,
    tracking_uid: str,
    seg: Dataset,
    sources: Sequence[Dataset],
    model: ModelIdentity,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=lesion.number,
        source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID),
    )
    volume = hd.sr.Measurement(
        name=codes.SCT.Volume,
        value=round(lesion.volume_ml, 4),
        unit=MILLILITER,
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=lesion.label),
        referenced_segment=segment,
        finding_type=codes.SCT.Lesion,
        algorithm_id=model.algorithm(),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
        measurements=[volume],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Lesion, value=codes.SCT.Present)
        ],
    )


def _source_image(key_source: Dataset) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=key_source.SOPClassUID,
        referenced_sop_instance_uid=key_source.SOPInstanceUID,
    )


def _viewer_group(
    lesion: Lesion,
    tracking_uid: str,
    outline: np.ndarray,
    key_source: Dataset,
    model: ModelIdentity,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The lesion as OHIF's measurement panel takes it: a Length on the key slice, titled by a
    Comment (see the module's docstring)."""
    row_mm, column_mm = (float(v) for v in key_source.PixelSpacing)
    ends, length_mm = longest_diameter(outline, row_mm, column_mm)
    diameter = hd.sr.Measurement(
        name=codes.SCT.LongAxis,
        value=round(length_mm, 2),
        unit=codes.UCUM.Millimeter,
        referenced_coordinates=[
            hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=ends,
                source_image=_source_image(key_source),
            )
        ],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=OHIF_LENGTH),
        finding_type=codes.SCT.Lesion,
        algorithm_id=model.algorithm(),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
        measurements=[diameter],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=viewer_title(lesion),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def viewer_title(lesion: Lesion) -> str:
    """The lesion's row in a viewer's measurement panel: "Lesion 1 — 4.2 mL"."""
    return f"{lesion.label} \u2014 {lesion.volume_ml:.1f} mL"


def _planar_group(
    lesion: Lesion,
    tracking_uid: str,
    outline: np.ndarray,
    key_source: Dataset,
    model: ModelIdentity,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    row_mm, column_mm = (float(v) for v in key_source.PixelSpacing)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=_source_image(key_source),
    )
    diameter = hd.sr.Measurement(
        name=codes.SCT.LongAxis,
        value=round(longest_diameter(outline, row_mm, column_mm)[1], 2),
        unit=codes.UCUM.Millimeter,
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=planar_tracking_uid(tracking_uid), identifier=f"{lesion.label} (key slice)"
        ),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        algorithm_id=model.algorithm(),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
        measurements=[diameter],
    )


def lesion_outline(area: np.ndarray) -> np.ndarray | None:
    """A closed polygon (column, row) around the pixels of `area`: the convex hull of their
    corners, in image coordinates (pixel centres at .5), first point repeated last."""
    rows, columns = np.nonzero(area)
    if rows.size == 0:
        return None
    corners = np.array(
        [
            (c + dc, r + dr)
            for r, c in zip(rows.tolist(), columns.tolist(), strict=True)
            for dr in (0, 1)
            for dc in (0, 1)
        ],
        dtype=np.float64,
    )
    try:
        hull = corners[ConvexHull(corners).vertices]
    except QhullError:  # cannot happen with whole pixels' corners; kept for safety
        return None
    return np.vstack([hull, hull[:1]]).astype(np.float32)


def longest_diameter(
    outline: np.ndarray, row_mm: float, column_mm: float
) -> tuple[np.ndarray, float]:
    """The two points of the outline farthest apart (image coordinates) and their distance in
    mm."""
    points = outline[:, :2].astype(np.float64) * np.array([column_mm, row_mm])
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    first, second = np.unravel_index(int(distances.argmax()), distances.shape)
    return outline[[first, second], :2].astype(np.float32), float(distances.max())


def _no_lesion_group(
    series_instance_uid: str, model: ModelIdentity
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(generate_uid(entropy_srcs=[series_instance_uid, "whole-reading"])),
            identifier="Whole reading",
        ),
        finding_type=codes.SCT.Lesion,
        algorithm_id=model.algorithm(),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Lesion, value=codes.SCT.Absent)
        ],
    )


def check_written_report(data: bytes, tracking_uids: Sequence[str], seg_sop_uid: str) -> None:
    """The SR's bytes parse back (highdicom) to a TID 1500 report with a volumetric group per
    lesion (its tracking UID, its SEG segment) and a planar group each; else
    WrittenObjectInvalid."""
    try:
        written = dcmread(io.BytesIO(data))
        report = hd.sr.Comprehensive3DSR.from_dataset(written, copy=False).content
        if not isinstance(report, hd.sr.MeasurementReport):
            raise WrittenObjectInvalid("the SR's content is not a TID 1500 report")
        volumetric = report.get_volumetric_roi_measurement_groups()
        planar = report.get_planar_roi_measurement_groups()
    except WrittenObjectInvalid:
        raise
    except Exception as err:
        raise WrittenObjectInvalid(f"the SR does not read back: {err}") from err
    found = [(g.tracking_uid, g.referenced_segment) for g in volumetric]
    if [uid for uid, _ in found] != list(tracking_uids):
        raise WrittenObjectInvalid(f"the SR's groups track {[u for u, _ in found]}")
    for number, (_uid, segment) in enumerate(found, start=1):
        if (
            segment is None
            or segment.referenced_sop_instance_uid != seg_sop_uid
            or segment.referenced_segment_numbers != [number]
        ):
            raise WrittenObjectInvalid(f"the SR's group {number} does not reference its segment")
    if [g.tracking_uid for g in planar] != [planar_tracking_uid(u) for u in tracking_uids]:
        raise WrittenObjectInvalid("the SR lacks a key-slice outline for some lesion")
    viewer = (
        [
            g.tracking_uid
            for g in report.get_image_measurement_groups(tracking_uid=None)
            if g.tracking_identifier == OHIF_LENGTH
        ]
        if tracking_uids
        else []
    )
    if viewer != list(tracking_uids):
        raise WrittenObjectInvalid("the SR lacks the viewer's group for some lesion")
