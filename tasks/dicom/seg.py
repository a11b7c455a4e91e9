"""The AI result as a DICOM Segmentation (highdicom): one binary segment per lesion.

Segment n is "Lesion n" (numbered by size, largest first: tasks/inference/lesions.py), with its
tracking identifier and a tracking UID that the caller derives (the same lesion of the same
series read by the same model version keeps it), so that a finding, its segment, its SR
measurement group and its verdict are one thing. It references the source MR instances (same
study, same frame of reference, one SEG frame per segment per source slice that has its
voxels), names the algorithm (the bundle's name and version), and says in its series
description and content description that it is AI generated and not for clinical use.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr.coding import CodedConcept
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes

NOT_FOR_CLINICAL_USE = "AI generated, not for clinical use"
SEG_SERIES_NUMBER = 9001
LESION_RED = hd.color.CIELabColor(53.24, 80.09, 67.20)  # sRGB red: viewers use it as is


def build_lesion_seg(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    *,
    algorithm_name: str,
    algorithm_version: str,
    tracking_uids: Sequence[str] = (),
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """A SEG over `sources` (one per slice, in `labels`' slice order; no pixel data needed).

    `labels` holds each lesion's number on its voxels (0 elsewhere); `tracking_uids[n - 1]` is
    lesion n's (one is drawn for any not given). A mask without lesions gives one empty segment
    "Lesion" (a SEG needs one)."""
    if labels.ndim != 3 or labels.shape[0] != len(sources):
        raise ValueError(f"mask {labels.shape} does not match {len(sources)} source slices")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64],
        version=algorithm_version[:64],
        family=codes.cid7162.ArtificialIntelligence,
    )
    count = int(labels.max())
    segments = [
        _segment(number, f"Lesion {number}" if count else "Lesion", algorithm, tracking_uids)
        for number in range(1, max(count, 1) + 1)
    ]
    mask = labels
    frames = frames_to_store(mask)
    seg = hd.seg.Segmentation(
        source_images=[sources[i] for i in frames] if frames is not None else list(sources),
        pixel_array=(mask[frames] if frames is not None else mask).astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="NeuroNova",
        manufacturer_model_name=algorithm_name[:64],
        software_versions=algorithm_version[:64],
        device_serial_number="neuronova-ai",
        series_description=f"AI lesions ({NOT_FOR_CLINICAL_USE})"[:64],
        content_description=NOT_FOR_CLINICAL_USE,
        content_label="AI_LESIONS",
        omit_empty_frames=frames is None,
    )
    return seg


def _segment(
    number: int,
    label: str,
    algorithm: hd.AlgorithmIdentificationSequence,
    tracking_uids: Sequence[str],
) -> hd.seg.SegmentDescription:
    category = CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uids[number - 1] if number <= len(tracking_uids) else hd.UID(),
        tracking_id=label,
        display_color=LESION_RED,
    )


def frames_to_store(mask: np.ndarray) -> list[int] | None:
    """None (store the slices with lesions), or the slices to store, empty ones included.

    OHIF's DICOM reader (dcmjs 0.4x) refuses a bit-packed multi-frame SEG whose frames each fill
    whole bytes but whose pixel data ends in the pad byte DICOM requires for an odd length
    ("Invalid frame length"). Then every slice is stored when their number is even; otherwise
    one empty slice next to a lesion (or a second empty one) is added. Either makes the length
    even; the SEG stays valid and the viewer can read it.
    """
    pixels_per_frame = int(mask.shape[1]) * int(mask.shape[2])
    segments = max(int(mask.max()), 1)
    with_lesion = [i for i in range(mask.shape[0]) if mask[i].any()]
    # Stored as highdicom stores it: each segment's frames where it has voxels.
    frames = max(sum(int(np.any(mask == s, axis=(1, 2)).sum()) for s in range(1, segments + 1)), 1)
    if pixels_per_frame % 8 or (frames * pixels_per_frame // 8) % 2 == 0:
        return None
    # Otherwise every segment gets a frame on every chosen slice (empty ones kept): an even
    # number of segments, or of slices, makes the length even.
    chosen = set(with_lesion) or {0}
    if segments % 2 == 0 or len(chosen) % 2 == 0:
        return sorted(chosen)
    if mask.shape[0] % 2 == 0:  # every slice as a frame: even, and every source referenced
        return list(range(mask.shape[0]))
    extra = next(
        (
            i
            for c in sorted(chosen)
            for i in (c - 1, c + 1)
            if 0 <= i < mask.shape[0] and i not in chosen
        ),
        None,
    )
    if extra is None:  # a single-slice volume: nothing to add; no viewer reads it as a stack
        return None
    return sorted(chosen | {extra})


class WrittenObjectInvalid(ValueError):
    """An object we wrote does not read back as what we meant to write: never stored."""


def check_written_seg(data: bytes, tracking_uids: Sequence[str]) -> None:
    """The SEG's bytes parse back (highdicom) to a segment per lesion, "Lesion n" with lesion
    n's tracking UID, each with voxels; else WrittenObjectInvalid."""
    try:
        # copy=False: the dataset was just read from the bytes, no one else holds it.
        seg = hd.seg.Segmentation.from_dataset(dcmread(io.BytesIO(data)), copy=False)
    except Exception as err:
        raise WrittenObjectInvalid(f"the SEG does not read back: {err}") from err
    found = [(d.SegmentLabel, getattr(d, "TrackingUID", None)) for d in seg.SegmentSequence]
    if tracking_uids:
        wanted = [(f"Lesion {n}", uid) for n, uid in enumerate(tracking_uids, start=1)]
        if found != wanted:
            raise WrittenObjectInvalid(f"the SEG's segments are {found}, not {wanted}")
        referenced = _segments_in_frames(seg)
        if referenced != set(range(1, len(tracking_uids) + 1)):
            raise WrittenObjectInvalid(f"the SEG's frames hold segments {sorted(referenced)}")
    elif len(found) != 1:
        raise WrittenObjectInvalid(f"a SEG without lesions has one empty segment, not {found}")


def _segments_in_frames(seg: Dataset) -> set[int]:
    """The segments the frames hold: per frame, or once for all (a single segment's SEG)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" in shared:
        return {int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)}
    return {
        int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
