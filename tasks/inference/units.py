"""The units of AI inference, each small: which series, segment it (with fallbacks), measure the
lesions, draw the overlay, keep and store the DICOM SEG, and record the result.

The flow (`flows/run_inference.py`) sequences them. Idempotency rests on the business key
(study, model, version): the SEG's UIDs are derived from it, so a second run finds the SEG in the
archive index instead of making another, and the result row is unique on it.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.uid import generate_uid
from scipy import ndimage
from sqlmodel import select

from common.db import InferenceResult, session_scope, utcnow
from common.errors import NeuroNovaError
from common.settings import Settings
from tasks.archive.orthanc import OrthancClient
from tasks.dicom.volume import Volume
from tasks.inference.model_space import labels_to_volume_grid, to_model_grid
from tasks.inference.segmentation import LoadedBundle, segment
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import InputRef
from tasks.ingest.prepare import DUPLICATE, STORED

log = logging.getLogger(__name__)

# Words that place a study or series in the head, in the tags scanners fill in.
_BRAIN_WORDS = re.compile(
    r"brain|head|neuro|cereb|crani|skull|kopf|sch[aä]del|hirn|cerveau|t[eê]te"
)
_SEQUENCE_PREFERENCE = (re.compile(r"flair", re.I), re.compile(r"t2", re.I))


class NoSuitableSeries(NeuroNovaError):
    """The study has nothing the model can read (the message says what was there)."""


class SegNotStored(NeuroNovaError):
    """The SEG did not reach the archive verified (the message gives ingest's reason)."""


# ----------------------------------------------------------------------------- the series


@dataclass(frozen=True)
class SeriesChoice:
    orthanc_id: str
    series_uid: str
    description: str
    instances: int
    brain_evidence: str | None  # the tag that says "head", or None


def is_brain_text(*values: str | None) -> str | None:
    """The first value that names the head or brain, or None."""
    for value in values:
        if value and _BRAIN_WORDS.search(value.lower()):
            return value
    return None


def choose_series(
    study_tags: dict[str, Any],
    series: list[dict[str, Any]],
    *,
    min_slices: int,
    require_brain: bool = False,
) -> SeriesChoice:
    """The MR series to read: of the head first, then FLAIR, then T2, then the most slices.

    `require_brain` (ingest's automatic trigger) skips series that no tag places in the head.
    """
    candidates = []
    seen = []
    for item in series:
        tags = item.get("MainDicomTags", {})
        modality = str(tags.get("Modality", ""))
        description = str(tags.get("SeriesDescription", ""))
        count = len(item.get("Instances", []))
        seen.append(f"{modality or '?'} '{description}' ({count} instances)")
        if modality != "MR" or count < min_slices:
            continue
        evidence = is_brain_text(
            tags.get("BodyPartExamined"),
            description,
            tags.get("ProtocolName"),
            study_tags.get("StudyDescription"),
        )
        candidates.append(
            SeriesChoice(item["ID"], str(tags.get("SeriesInstanceUID", "")), description, count,
                         evidence)
        )  # fmt: skip
    if require_brain and candidates and not any(c.brain_evidence for c in candidates):
        raise NoSuitableSeries(
            "no MR series says it is of the head (BodyPartExamined, series or study description,"
            " protocol); the brain-lesion model was not run. `neuronova infer` reads it anyway"
        )
    candidates = [c for c in candidates if c.brain_evidence or not require_brain]
    if not candidates:
        raise NoSuitableSeries(
            f"no MR series with at least {min_slices} slices in this study "
            f"(found: {', '.join(seen) or 'no series'}); nothing for the brain-lesion model to read"
        )

    def rank(choice: SeriesChoice) -> tuple[int, int, int]:
        preference = next(
            (len(_SEQUENCE_PREFERENCE) - i for i, p in enumerate(_SEQUENCE_PREFERENCE)
             if p.search(choice.description)),
            0,
        )  # fmt: skip
        return (choice.brain_evidence is not None, preference, choice.instances)

    return max(candidates, key=rank)


def find_study_series(client: OrthancClient, study_uid: str) -> tuple[dict[str, Any], list[Any]]:
    """(the study's and its patient's main tags, its series) from Orthanc; NoSuitableSeries if
    the study is not there."""
    study_id = client.lookup(study_uid, "Study")
    if study_id is None:
        raise NoSuitableSeries(f"study {study_uid} is not in the archive (ingest it first)")
    study = client.study(study_id)
    tags = dict(study.get("PatientMainDicomTags", {})) | dict(study.get("MainDicomTags", {}))
    return tags, client.study_series(study_id)


# ----------------------------------------------------------------------------- the segmentation


@dataclass(frozen=True)
class SegmentationRun:
    mask: np.ndarray  # uint8 (slice, row, column), on the source grid
    device: str
    attempts: tuple[str, ...]  # what was tried, in order, and how it ended
    model_sha256: str  # the weights that produced it


FallbackPlan = tuple[str, Callable[[], LoadedBundle]]


def fallback_plans(bundle: LoadedBundle) -> list[FallbackPlan]:
    """How to get through an out-of-memory: as configured, smaller windows, then the CPU."""
    plans: list[FallbackPlan] = [("as configured", lambda: bundle)]
    plans.append(("smaller windows", lambda: with_smaller_windows(bundle)))
    if bundle.device.type != "cpu":
        plans.append(("on the CPU", lambda: on_cpu(bundle)))
    return plans


def with_smaller_windows(bundle: LoadedBundle) -> LoadedBundle:
    """One window at a time, half the size (multiples of 16), stitched in host memory."""
    from monai.inferers import SlidingWindowInferer

    inferer = bundle.inferer
    roi = getattr(inferer, "roi_size", (64, 64, 64))
    smaller = [max(16, (int(r) // 2) // 16 * 16) for r in roi]
    return replace(
        bundle,
        inferer=SlidingWindowInferer(
            roi_size=smaller,
            sw_batch_size=1,
            overlap=float(getattr(inferer, "overlap", 0.25)),
            mode=getattr(inferer, "mode", "gaussian"),
            device=torch.device("cpu"),
        ),
    )


def on_cpu(bundle: LoadedBundle) -> LoadedBundle:
    """A CPU copy of the bundle (the cached GPU one stays as it is for the next study)."""
    torch.set_flush_denormal(True)
    network = copy.deepcopy(bundle.network).to("cpu")
    return replace(with_smaller_windows(bundle), network=network, device=torch.device("cpu"))


def segment_with_fallback(
    bundle: LoadedBundle, image: np.ndarray
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Labels for a model-grid image, trying each plan in turn on out-of-memory errors."""
    attempts: list[str] = []
    for name, make in fallback_plans(bundle):
        plan = make()
        try:
            labels = segment(plan, image)
        except torch.OutOfMemoryError as err:
            attempts.append(f"{name} on {plan.device}: out of memory")
            log.warning("inference %s on %s ran out of memory (%s); next plan", name, plan.device,
                        str(err).splitlines()[0][:120])  # fmt: skip
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        attempts.append(f"{name} on {plan.device}: ok")
        return labels, str(plan.device), tuple(attempts)
    raise torch.OutOfMemoryError("; ".join(attempts))


def segment_volume(bundle: LoadedBundle, volume: Volume) -> SegmentationRun:
    """The lesion mask on the volume's own grid: to RAS at the model's spacing, and back."""
    grid = to_model_grid(volume, bundle.spacing_mm)
    labels, device, attempts = segment_with_fallback(bundle, grid.image)
    mask = labels_to_volume_grid(labels, grid)
    return SegmentationRun(mask=mask, device=device, attempts=attempts, model_sha256=bundle.sha256)


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class LesionMeasurements:
    count: int
    volume_ml: float
    largest_slice: int | None  # the slice with the most lesion voxels


def measure_lesions(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> LesionMeasurements:
    """Lesions are 26-connected components; their volume from the voxel size."""
    _labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
    voxels = int(np.count_nonzero(mask))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    largest = int(np.argmax(per_slice)) if voxels else None
    return LesionMeasurements(count=int(count), volume_ml=voxels * voxel_ml, largest_slice=largest)


def overlay_png(image: np.ndarray, mask: np.ndarray, *, min_side: int = 256) -> bytes:
    """One slice, windowed to its 1st-99th percentiles, lesions in translucent red, as PNG."""
    from PIL import Image

    values = image.astype(np.float32)
    inside = values[values > 0]
    low, high = np.percentile(inside, (1, 99)) if inside.size else (0.0, 1.0)
    grey = np.clip((values - low) / max(float(high - low), 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    red = np.array([255.0, 40.0, 40.0])
    lesion = mask > 0
    rgb[lesion] = 0.45 * rgb[lesion] + 0.55 * red
    picture = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    scale = max(1, -(-min_side // min(picture.size)))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the SEG


def seg_uids(study_uid: str, model: str, version: str) -> tuple[str, str]:
    """(series UID, SOP instance UID) of the SEG: the same for the same study and model version."""
    key = [study_uid, model, version]
    return (
        generate_uid(entropy_srcs=[*key, "seg-series"]),
        generate_uid(entropy_srcs=[*key, "seg-instance"]),
    )


def store_seg(settings: Settings, data: bytes, study_uid: str, sop_uid: str) -> Path:
    """Keep the SEG under results/ and ingest it (verified, indexed); returns the kept file.

    Through ingest rather than a bare upload: the archive index must place it in its study,
    or the gate would not let the viewer open it.
    """
    folder = settings.results_dir / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"SEG-{sop_uid}.dcm"
    if not path.exists():  # an earlier run's file is the same result: keep its bytes
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    (outcome,) = ingest_batch(settings, [InputRef(str(path))])
    if outcome.status not in (STORED, DUPLICATE):
        raise SegNotStored(
            f"the SEG {path.name} was not stored: {outcome.status}, {outcome.reason}"
        )
    return path


# ----------------------------------------------------------------------------- the record


def find_result(
    settings: Settings, study_uid: str, model: str, version: str
) -> InferenceResult | None:
    with session_scope(settings.resolved_database_url) as session:
        query = select(InferenceResult).where(
            InferenceResult.study_instance_uid == study_uid,
            InferenceResult.model_name == model,
            InferenceResult.model_version == version,
        )
        return session.exec(query).first()


def save_result(settings: Settings, values: dict[str, Any]) -> InferenceResult:
    """Insert or update the row for (study, model, version); timings merged, not replaced."""
    with session_scope(settings.resolved_database_url) as session:
        query = select(InferenceResult).where(
            InferenceResult.study_instance_uid == values["study_instance_uid"],
            InferenceResult.model_name == values["model_name"],
            InferenceResult.model_version == values["model_version"],
        )
        row = session.exec(query).first()
        timings = dict(values.pop("timings", {}))
        if row is None:
            row = InferenceResult(**values, timings=json.dumps(timings))
        else:
            for name, value in values.items():
                setattr(row, name, value)
            row.timings = json.dumps(json.loads(row.timings) | timings)
        if row.status == "completed" and row.completed_at is None:
            row.completed_at = utcnow()
        session.add(row)
        session.flush()
        session.refresh(row)
        return row
