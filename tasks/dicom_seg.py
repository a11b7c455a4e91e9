"""The AI result as a DICOM Segmentation (highdicom): one binary "Lesion" segment.

It references the source MR instances (same study, same frame of reference, one SEG frame per
source slice that has lesion voxels), names the algorithm (the bundle's name and version), and
says in its series description and content description that it is AI generated and not for
clinical use.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr.coding import CodedConcept
from pydicom import Dataset
from pydicom.sr.codedict import codes

NOT_FOR_CLINICAL_USE = "AI generated, not for clinical use"
SEG_SERIES_NUMBER = 9001


def build_lesion_seg(
    sources: Sequence[Dataset],
    mask: np.ndarray,
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """A SEG over `sources` (one per slice, in `mask`'s slice order; no pixel data needed)."""
    if mask.ndim != 3 or mask.shape[0] != len(sources):
        raise ValueError(f"mask {mask.shape} does not match {len(sources)} source slices")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64],
        version=algorithm_version[:64],
        family=codes.cid7162.ArtificialIntelligence,
    )
    category = CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=category,
        segmented_property_type=CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id="AI lesion segmentation",
    )
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
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
        omit_empty_frames=True,
    )
    return seg
