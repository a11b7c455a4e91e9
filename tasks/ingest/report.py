"""What an ingest run reports: counts per status, and per study a table of its series (instances,
bytes before and after, ratio, verification), published as a Prefect artifact per study."""

from __future__ import annotations

from collections import defaultdict
from typing import TypedDict

from prefect.artifacts import create_table_artifact

from tasks.ingest.prepare import FileOutcome, IngestStatus


class SeriesReport(TypedDict):
    """One series of an ingested study: the row of its artifact table."""

    series_instance_uid: str
    modality: str
    instances: int
    stored: int
    duplicates: int
    bytes_before: int
    bytes_after: int
    ratio: float | None  # bytes before / after
    verification: str
    transfer_syntaxes: str


class StudyReport(TypedDict):
    study_instance_uid: str
    series: list[SeriesReport]


def count_statuses(outcomes: list[FileOutcome]) -> dict[str, int]:
    """How many inputs ended in each status."""
    counts = {status.value: 0 for status in IngestStatus}
    for outcome in outcomes:
        counts[outcome.status.value] += 1
    return counts


def summarise_studies(outcomes: list[FileOutcome]) -> dict[str, list[SeriesReport]]:
    """Per study, per series: instances, bytes before/after, ratio, verification."""
    grouped: dict[str, dict[str, list[FileOutcome]]] = defaultdict(lambda: defaultdict(list))
    for outcome in outcomes:
        if (
            outcome.study_uid
            and outcome.series_uid
            and outcome.status in (IngestStatus.STORED, IngestStatus.DUPLICATE)
        ):
            grouped[outcome.study_uid][outcome.series_uid].append(outcome)
    return {
        study: [_series_row(series, items) for series, items in sorted(by_series.items())]
        for study, by_series in grouped.items()
    }


def _series_row(series_uid: str, items: list[FileOutcome]) -> SeriesReport:
    before = sum(i.bytes_in for i in items)
    after = sum(i.bytes_stored for i in items)
    verified = sum(1 for i in items if i.verified)
    return SeriesReport(
        series_instance_uid=series_uid,
        modality=items[0].modality or "",
        instances=len(items),
        stored=sum(1 for i in items if i.status == IngestStatus.STORED),
        duplicates=sum(1 for i in items if i.status == IngestStatus.DUPLICATE),
        bytes_before=before,
        bytes_after=after,
        ratio=round(before / after, 3) if after else None,
        verification=f"{verified}/{len(items)} verified bit-exact",
        transfer_syntaxes=", ".join(sorted({i.transfer_syntax or "" for i in items})),
    )


def publish_study_artifact(study_uid: str, rows: list[SeriesReport]) -> None:
    """A table artifact per study, keyed so the UI shows its history across runs."""
    create_table_artifact(
        key=f"ingest-{study_uid.replace('.', '-')}"[:100],
        table=[dict(row) for row in rows],
        description=f"Ingest of study `{study_uid}`: series, bytes before/after, verification.",
    )
