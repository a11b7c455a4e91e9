"""The AI result in the Prefect UI: a table of the result and the overlay PNG of the slice with
the largest lesion area (also kept in `results/<study>/`). AI generated, not for clinical use."""

from __future__ import annotations

import base64
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from common.db import InferenceResult
from common.settings import Settings
from tasks.dicom.volume import Volume
from tasks.inference.lesions import overlay_png
from tasks.inference.results import result_summary
from tasks.inference.segmentation import SegmentationRun


def _artifact_key(prefix: str, study_uid: str) -> str:
    return f"{prefix}-{study_uid.replace('.', '-')}"[:100]


def publish_result_table(row: InferenceResult) -> None:
    """The result as a table artifact, keyed by study so the UI shows its history."""
    facts = result_summary(row, reused=False)
    table: list[dict[str, Any]] = [
        {"field": "model", "value": f"{row.model_name} {row.model_version}"},
        {"field": "model sha256", "value": row.model_sha256[:16] + "…"},
        {"field": "device", "value": row.device},
        {"field": "series read", "value": row.series_instance_uid},
        {"field": "lesions", "value": row.lesion_count},
        {"field": "total volume (mL)", "value": row.lesion_volume_ml},
        {"field": "SEG", "value": row.seg_sop_instance_uid},
        {"field": "FHIR report", "value": facts["fhir"]["report"] or "owed"},
        *({"field": f"time {k}", "value": v} for k, v in facts["timings"].items()),
    ]
    create_table_artifact(
        key=_artifact_key("inference", row.study_instance_uid),
        table=table,
        description=f"AI brain-lesion result for `{row.study_instance_uid}` "
        "(AI generated, not for clinical use).",
    )


def publish_overlay(
    settings: Settings,
    study_uid: str,
    volume: Volume,
    run: SegmentationRun,
    largest_slice: int | None,
    row: InferenceResult,
) -> None:
    """The slice with the largest lesion area, overlay drawn: kept as a file, shown in the UI."""
    index = largest_slice if largest_slice is not None else volume.pixels.shape[0] // 2
    png = overlay_png(volume.pixels[index], run.mask[index])
    path = settings.results_dir / study_uid / f"overlay-{row.seg_sop_instance_uid}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    encoded = base64.b64encode(png).decode("ascii")
    create_markdown_artifact(
        key=_artifact_key("inference-overlay", study_uid),
        markdown=(
            f"### AI lesions, slice {index + 1} of {volume.pixels.shape[0]}\n\n"
            f"![the AI's lesions in red](data:image/png;base64,{encoded})\n\n"
            f"{row.lesion_count} lesion(s), {row.lesion_volume_ml:.2f} mL; "
            f"model {row.model_name} {row.model_version} on {row.device}. "
            f"AI generated, not for clinical use. File: `{path}`"
        ),
        description=f"Overlay for study `{study_uid}`",
    )
