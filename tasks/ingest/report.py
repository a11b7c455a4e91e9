"""What an ingest run reports: counts per status, and per study a table of its series (instances,
bytes before and after, ratio, verification), published as a Prefect artifact per study."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prefect.artifacts import create_table_artifact

from tasks.ingest.prepare import CONFLICT, DUPLICATE, QUARANTINED, STORED, FileOutcome


def count_statuses(outcomes: list[FileOutcome]) -> dict[str, int]:
    """How many inputs ended in each status."""
    counts = dict.fromkeys((STORED, DUPLICATE, QUARANTINED, CONFLICT), 0)
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


def summarise_studies(outcomes: list[FileOutcome]) -> dict[str, list[dict[str, Any]]]:
    """Per study, per series: instances, bytes before/after, ratio, verification."""
    grouped: dict[str, dict[str, list[FileOutcome]]] = defaultdict(lambda: defaultdict(list))
    for outcome in outcomes:
        if outcome.study_uid and outcome.series_uid and outcome.status in (STORED, DUPLICATE):
            grouped[outcome.study_uid][outcome.series_uid].append(outcome)
    return {
        study: [_series_row(series, items) for series, items in sorted(by_series.items())]
        for study, by_series in grouped.items()
    }


def _series_row(series_uid: str, items: list[FileOutcome]) -> dict[str, Any]:
    before = sum(i.bytes_in for i in items)
    after = sum(i.bytes_stored for i in items)
    verified = sum(1 for i in items if i.verified)
    return {
        "series_instance_uid": series_uid,
        "modality": items[0].modality or "",
        "instances": len(items),
        "stored": sum(1 for i in items if i.status == STORED),
        "duplicates": sum(1 for i in items if i.status == DUPLICATE),
        "bytes_before": before,
        "bytes_after": after,
        "ratio": round(before / after, 3) if after else None,
        "verification": f"{verified}/{len(items)} verified bit-exact",
        "transfer_syntaxes": ", ".join(sorted({i.transfer_syntax or "" for i in items})),
    }


def publish_study_artifact(study_uid: str, rows: list[dict[str, Any]]) -> None:
    """A table artifact per study, keyed so the UI shows its history across runs."""
    create_table_artifact(
        key=f"ingest-{study_uid.replace('.', '-')}"[:100],
        table=rows,
        description=f"Ingest of study `{study_uid}`: series, bytes before/after, verification.",
    )
