"""An AI reading of the sample brain MR written by the production writers (tasks/dicom/seg.py,
tasks/dicom/sr.py) from a known mask, without the model: for the tests of the objects
themselves and of what displays them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset

from tasks.dicom.seg import build_lesion_seg
from tasks.dicom.sr import ModelIdentity, build_measurement_report
from tasks.inference.lesions import Lesion, label_lesions
from tasks.inference.results import lesion_tracking_uids, seg_uids, sr_uids


@dataclass(frozen=True)
class AiReading:
    sources: list[Dataset]  # the MR slices' headers, in the files' order
    spacing: tuple[float, float, float]  # mm: slice, row, column
    labels: np.ndarray  # each lesion's voxels set to its number
    lesions: list[Lesion]
    tracking_uids: list[str]
    seg: hd.seg.Segmentation
    sr: hd.sr.Comprehensive3DSR


def read_with_mask(files: Sequence[Path], mask: np.ndarray, model: ModelIdentity) -> AiReading:
    """The SEG and SR the flow would write for `mask` over the MR in `files`, with the UIDs it
    would derive for `model`."""
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    spacing = (float(sources[0].SliceThickness), *(float(v) for v in sources[0].PixelSpacing))
    labels, lesions = label_lesions(mask, spacing)  # type: ignore[arg-type]
    study, series = str(sources[0].StudyInstanceUID), str(sources[0].SeriesInstanceUID)
    uids = lesion_tracking_uids(study, series, model.name, model.version, len(lesions))
    seg_series, seg_sop = seg_uids(study, series, model.name, model.version)
    seg = build_lesion_seg(
        sources,
        labels,
        algorithm_name=model.name,
        algorithm_version=model.version,
        tracking_uids=uids,
        series_instance_uid=seg_series,
        sop_instance_uid=seg_sop,
    )
    sr_series, sr_sop = sr_uids(study, series, model.name, model.version)
    sr = build_measurement_report(
        sources,
        seg,
        labels,
        lesions,
        uids,
        model,
        series_instance_uid=sr_series,
        sop_instance_uid=sr_sop,
    )
    return AiReading(sources, spacing, labels, lesions, uids, seg, sr)  # type: ignore[arg-type]
