"""The worklist: the studies a user may open, newest first, with what a clinician needs to pick one.

One query per page, restricted by the same rule as every other door (`accounts.may_open_study`):
admins and radiologists see every indexed study, clinicians the studies of the patients on their
care list (and of those a break-glass grant opened for them, while it lasts), anyone else
nothing. Searches narrow that set; they never widen it, so nothing on the page (a name, a count,
a page number) comes from a study the user may not open. "Awaiting review" keeps the studies with
a completed AI reading that no reader has judged as a whole yet.

Patient names come from the patient cache (`patients.display_name`, kept with each FHIR Patient
by the sync); a search by name matches every word typed, in any order. A study whose patient was
never synced shows its MRN alone. The AI column comes from `inference_results` and the review
state from `reading_verdicts` (the newest verdict on each reading is its current one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func
from sqlmodel import Session, col, select

from common.db import CachedPatient, InferenceResult, ReadingVerdict, Study, User
from webapp.accounts import openable_studies

PAGE_SIZE = 50
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class WorklistFilter:
    """What the search form sends; empty fields do not filter."""

    mrn: str = ""
    name: str = ""
    date_from: str = ""  # YYYY-MM-DD, as an <input type=date> sends it
    date_to: str = ""
    awaiting_review: bool = False
    page: int = 1

    @property
    def searched(self) -> bool:
        return bool(self.mrn or self.name or self.date_from or self.date_to or self.awaiting_review)

    @classmethod
    def from_args(cls, args: Any) -> WorklistFilter:
        """From a request's query string, bounded: no field longer than a real one, dates only
        in the form a date input sends (anything else is ignored, not an error)."""

        def text(name: str, limit: int) -> str:
            value = args.get(name, "")
            return value.strip()[:limit] if isinstance(value, str) else ""

        def date(name: str) -> str:
            value = text(name, 10)
            return value if _DATE.match(value) else ""

        try:
            page = max(1, min(int(args.get("page", "1")), 10_000))
        except ValueError:
            page = 1
        return cls(
            mrn=text("mrn", 64),
            name=text("name", 64),
            date_from=date("from"),
            date_to=date("to"),
            awaiting_review=args.get("review", "") == "awaiting",
            page=page,
        )

    def query_args(self, page: int) -> dict[str, str]:
        """The same search, on another page (for the pager's links)."""
        args = {
            "mrn": self.mrn,
            "name": self.name,
            "from": self.date_from,
            "to": self.date_to,
            "review": "awaiting" if self.awaiting_review else "",
        }
        return {k: v for k, v in args.items() if v} | {"page": str(page)}


@dataclass(frozen=True)
class AiStatus:
    """The AI column: `label` for people, `state` for the page's script and styles, and where
    the readers' review stands (`review`: "" when there is nothing to review)."""

    state: str  # none, queued, running, failed, lesions, no-lesion, pending
    label: str
    review: str = ""  # awaiting review, accepted by <name>, rejected by …, corrected by …
    review_state: str = ""  # awaiting, accepted, rejected, corrected (for styles)


NOT_APPLICABLE = AiStatus("none", "not applicable")
# The run's state (`studies.ai_state`) until a reading says more; queued and running win over
# an earlier series' reading (a new series is being read).
_RUN_STATES = {
    "queued": AiStatus("queued", "AI queued"),
    "running": AiStatus("running", "AI reading…"),
    "failed": AiStatus("failed", "AI failed"),
}
_IN_PROGRESS = frozenset({"queued", "running"})


@dataclass(frozen=True)
class WorklistRow:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str  # YYYY-MM-DD or ""
    description: str
    modalities: str
    ai: AiStatus


@dataclass(frozen=True)
class WorklistPage:
    rows: list[WorklistRow]
    page: int
    has_next: bool


def worklist_page(session: Session, user: User, wanted: WorklistFilter) -> WorklistPage:
    """One page of the user's worklist under the search; a row more than a page is read to know
    whether there is a next page (no COUNT over the whole index)."""
    query = _visible_studies(session, user)
    if query is None:
        return WorklistPage(rows=[], page=wanted.page, has_next=False)
    if wanted.mrn:
        query = query.where(col(Study.patient_id) == wanted.mrn)
    for word in wanted.name.lower().replace(",", " ").split():  # "Lovelace, Ada" or "ada love"
        query = query.where(func.lower(CachedPatient.display_name).contains(word, autoescape=True))
    if wanted.date_from:
        query = query.where(col(Study.study_date) >= wanted.date_from.replace("-", ""))
    if wanted.date_to:
        query = query.where(col(Study.study_date) <= wanted.date_to.replace("-", ""))
    if wanted.awaiting_review:
        query = query.where(_awaiting_review())
    offset = (wanted.page - 1) * PAGE_SIZE
    found = list(session.exec(query.offset(offset).limit(PAGE_SIZE + 1)))
    rows = [_row(study, name or "") for study, name in found[:PAGE_SIZE]]
    return WorklistPage(
        rows=_with_ai(session, rows), page=wanted.page, has_next=len(found) > PAGE_SIZE
    )


def worklist_row(session: Session, user: User, study_uid: str) -> WorklistRow | None:
    """One study's row (for the page's live update), when the user may open it; else None."""
    query = _visible_studies(session, user)
    if query is None:
        return None
    found = session.exec(query.where(col(Study.study_instance_uid) == study_uid)).first()
    if found is None:
        return None
    study, name = found
    (row,) = _with_ai(session, [_row(study, name or "")])
    return row


def _visible_studies(session: Session, user: User) -> Any:
    """The studies this user may open with their cached patient, newest first; None for a user
    who may open none (`accounts.openable_studies`)."""
    condition = openable_studies(session, user)
    if condition is None:
        return None
    return (
        select(Study, CachedPatient.display_name)
        .join(CachedPatient, col(CachedPatient.mrn) == col(Study.patient_id), isouter=True)
        .order_by(
            col(Study.study_date).desc(),
            col(Study.created_at).desc(),
            col(Study.study_instance_uid),
        )
        .where(condition)
    )


def _awaiting_review() -> Any:
    """A study with a completed reading that has no verdict on the whole reading yet."""
    judged = exists().where(
        and_(
            col(ReadingVerdict.result_id) == col(InferenceResult.id),
            col(ReadingVerdict.finding_tracking_uid).is_(None),
        )
    )
    return exists().where(
        and_(
            col(InferenceResult.study_instance_uid) == col(Study.study_instance_uid),
            col(InferenceResult.status) == "completed",
            ~judged,
        )
    )


def _row(study: Study, name: str) -> WorklistRow:
    date = study.study_date or ""
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return WorklistRow(
        study_instance_uid=study.study_instance_uid,
        patient_id=study.patient_id,
        patient_name=name,
        study_date=date,
        description=study.study_description or "",
        modalities=", ".join(m for m in study.modalities.split("\\") if m),
        ai=_RUN_STATES.get(study.ai_state or "", NOT_APPLICABLE),
    )


def _ai_statuses(session: Session, studies: list[str]) -> dict[str, AiStatus]:
    """The AI column of each study on the page, from its readings (one query for the page)."""
    if not studies:
        return {}
    readings = session.exec(
        select(InferenceResult).where(col(InferenceResult.study_instance_uid).in_(studies))
    )
    by_study: dict[str, list[InferenceResult]] = {}
    for reading in readings:
        by_study.setdefault(reading.study_instance_uid, []).append(reading)
    ids = [r.id for found in by_study.values() for r in found]
    verdicts: dict[int, ReadingVerdict] = {}  # each reading's newest verdict on it as a whole
    if ids:
        for verdict in session.exec(
            select(ReadingVerdict)
            .where(
                col(ReadingVerdict.result_id).in_(ids),
                col(ReadingVerdict.finding_tracking_uid).is_(None),
            )
            .order_by(col(ReadingVerdict.id))
        ):
            verdicts[verdict.result_id] = verdict
    return {study: ai_status(found, verdicts) for study, found in by_study.items()}


def ai_status(
    readings: list[InferenceResult], verdicts: dict[int, ReadingVerdict] | None = None
) -> AiStatus:
    """What a study's readings add up to: lesions (count and mL over its MR series), none found,
    or found with the report still owed; and the readers' review of them (`verdicts`: each
    reading's current verdict on it as a whole)."""
    if not readings:
        return NOT_APPLICABLE
    status = _found(readings)
    if status.state == "pending":
        return status
    judged = [(verdicts or {}).get(r.id or 0) for r in readings]
    if any(v is None for v in judged):
        return AiStatus(status.state, status.label, "awaiting review", "awaiting")
    latest = max((v for v in judged if v is not None), key=lambda v: v.id or 0)
    said = f"{latest.verdict} by {latest.username}"
    return AiStatus(status.state, status.label, said, latest.verdict)


def _found(readings: list[InferenceResult]) -> AiStatus:
    count = sum(r.lesion_count for r in readings)
    volume = sum(r.lesion_volume_ml for r in readings)
    if any(r.status != "completed" for r in readings):
        return AiStatus("pending", "read, report pending")
    if count == 0:
        return AiStatus("no-lesion", "no lesion")
    noun = "lesion" if count == 1 else "lesions"
    return AiStatus("lesions", f"{count} {noun}, {volume:.1f} mL")


def _with_ai(session: Session, rows: list[WorklistRow]) -> list[WorklistRow]:
    """The rows with their AI column filled in (one query for all of them)."""
    statuses = _ai_statuses(session, [r.study_instance_uid for r in rows])
    return [
        WorklistRow(**{**r.__dict__, "ai": statuses[r.study_instance_uid]})
        if r.study_instance_uid in statuses and r.ai.state not in _IN_PROGRESS
        else r
        for r in rows
    ]
