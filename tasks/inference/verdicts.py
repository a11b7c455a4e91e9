"""The reader's verdict on an AI reading (IHE AIRA): accepted, rejected (with a reason) or
corrected (with the SEG the reader saved), on the whole reading or on one finding.

Verdicts are append-only (`reading_verdicts`): a later one on the same reading or finding, by the
same reader or another, becomes the current one and the earlier stays on record. Recording is
local and never waits on FHIR: the FHIR side (statuses, the reader, a Provenance) is sent after
the commit by `tasks/inference/verdict_fhir.py`, and is owed while FHIR cannot take it.

The webapp asks who may give a verdict (radiologists, on studies they may open) before it comes
here; this module checks what the verdict is about.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from common.db import (
    InferenceFinding,
    InferenceResult,
    Instance,
    ReadingVerdict,
    Study,
    User,
    Verdict,
    as_utc,
)
from common.errors import NeuroNovaError
from tasks.dicom.uid import is_uid
from tasks.inference.results import InferenceStatus

MIN_REASON_LENGTH = 10
MAX_REASON_LENGTH = 500
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_AI_RUNNING = frozenset({"queued", "running"})


class VerdictRefused(NeuroNovaError):
    """A verdict that cannot be recorded; `status` is the HTTP answer that says why (400 a bad
    body, 404 an unknown reading or finding, 409 a reading still being made)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class VerdictRequest:
    """What a reader decided: on the whole reading (`finding` None) or on one finding."""

    verdict: Verdict
    finding: str | None  # the finding's Tracking UID
    reason: str | None
    corrected_seg: str | None  # corrected: the SOP Instance UID of the SEG the reader saved
    corrected_volumes: str | None = (
        None  # JSON, what that SEG measures (tasks.inference.corrections)
    )


def parse_verdict(body: object) -> VerdictRequest:
    """The verdict a JSON body (or a form) asks for; VerdictRefused(400) naming what is wrong."""
    if not isinstance(body, dict):
        raise VerdictRefused(400, "a JSON object is required")
    verdict = body.get("verdict")
    if verdict not in set(Verdict):
        raise VerdictRefused(400, "verdict must be one of accepted, rejected, corrected")
    finding = body.get("finding")
    if finding is not None and (not isinstance(finding, str) or not is_uid(finding)):
        raise VerdictRefused(400, "finding must be a finding's Tracking UID, or null")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise VerdictRefused(400, "reason must be text")
    reason = " ".join(reason.split()) if reason else None
    if verdict == Verdict.REJECTED and not (
        reason and MIN_REASON_LENGTH <= len(reason) <= MAX_REASON_LENGTH
    ):
        raise VerdictRefused(
            400,
            f"reason is required to reject: {MIN_REASON_LENGTH} to {MAX_REASON_LENGTH} characters",
        )
    if reason and len(reason) > MAX_REASON_LENGTH:
        raise VerdictRefused(400, f"reason is longer than {MAX_REASON_LENGTH} characters")
    corrected = body.get("corrected_seg")
    if verdict == Verdict.CORRECTED:
        if not isinstance(corrected, str) or not is_uid(corrected):
            raise VerdictRefused(
                400,
                "corrected_seg (the SOP Instance UID of the corrected SEG) is required: "
                "a correction is recorded by saving the edited segmentation from the viewer",
            )
    elif corrected is not None:
        raise VerdictRefused(400, "corrected_seg is only for a corrected verdict")
    return VerdictRequest(Verdict(verdict), finding, reason, corrected)


def record_verdict(
    session: Session, study_uid: str, reading_id: int, wanted: VerdictRequest, reader: User
) -> ReadingVerdict:
    """Check what the verdict is about and append it (the caller commits). VerdictRefused
    for an unknown reading or finding (404), a reading still being made (409), a corrected SEG
    that is not a SEG of this study (400)."""
    reading = session.get(InferenceResult, reading_id)
    if reading is None or reading.study_instance_uid != study_uid:
        raise VerdictRefused(404, "no such reading in this study")
    study = session.get(Study, study_uid)
    if (
        reading.status != InferenceStatus.COMPLETED
        and study is not None
        and study.ai_state in _AI_RUNNING
    ):
        raise VerdictRefused(409, "the AI is still reading this study: try again when it is done")
    if wanted.finding is not None:
        found = session.exec(
            select(InferenceFinding).where(
                InferenceFinding.result_id == reading_id,
                InferenceFinding.tracking_uid == wanted.finding,
            )
        ).first()
        if found is None:
            raise VerdictRefused(404, "no such finding in this reading")
    if wanted.corrected_seg is not None and not _is_seg_of_study(
        session, wanted.corrected_seg, study_uid
    ):
        raise VerdictRefused(400, "corrected_seg is not a stored SEG of this study")
    assert reader.id is not None
    row = ReadingVerdict(
        uid=str(uuid.uuid4()),
        result_id=reading_id,
        finding_tracking_uid=wanted.finding,
        verdict=wanted.verdict,
        reason=wanted.reason,
        corrected_seg_sop_instance_uid=wanted.corrected_seg,
        corrected_volumes=wanted.corrected_volumes,
        user_id=reader.id,
        username=reader.username,
    )
    session.add(row)
    session.flush()
    return row


def _is_seg_of_study(session: Session, sop_uid: str, study_uid: str) -> bool:
    found = session.get(Instance, sop_uid)
    return (
        found is not None
        and found.study_instance_uid == study_uid
        and found.sop_class_uid == _SEG_SOP_CLASS
    )


# --------------------------------------------------------------------------- what is current


def current_verdicts(
    verdicts: list[ReadingVerdict],
) -> tuple[ReadingVerdict | None, dict[str, ReadingVerdict]]:
    """The reading's current verdict and each finding's (the newest of each wins)."""
    reading: ReadingVerdict | None = None
    findings: dict[str, ReadingVerdict] = {}
    for row in sorted(verdicts, key=lambda v: v.id or 0):
        if row.finding_tracking_uid is None:
            reading = row
        else:
            findings[row.finding_tracking_uid] = row
    return reading, findings


def verdict_view(row: ReadingVerdict | None) -> dict[str, Any] | None:
    """A verdict as the API shows it."""
    if row is None:
        return None
    view: dict[str, Any] = {
        "verdict": row.verdict,
        "by": row.username,
        "at": _iso(row.at),
        "reason": row.reason,
    }
    if row.corrected_seg_sop_instance_uid:
        view["corrected_seg_sop_instance_uid"] = row.corrected_seg_sop_instance_uid
    if row.corrected_volumes:
        view["corrected_volumes_ml"] = json.loads(row.corrected_volumes)
    return view


def _iso(at: datetime) -> str:
    return as_utc(at).isoformat()


def readings_of_study(session: Session, study_uid: str) -> list[dict[str, Any]]:
    """Every AI reading of a study, oldest first, with its findings and their current
    verdicts (`GET /api/studies/<uid>/readings`); three queries, whatever the count."""
    readings = list(
        session.exec(
            select(InferenceResult)
            .where(InferenceResult.study_instance_uid == study_uid)
            .order_by(col(InferenceResult.id))
        )
    )
    return _views(session, readings)


def one_reading(session: Session, reading_id: int) -> dict[str, Any] | None:
    """One reading as the API shows it (None: no such reading)."""
    reading = session.get(InferenceResult, reading_id)
    return _views(session, [reading])[0] if reading is not None else None


def _views(session: Session, readings: list[InferenceResult]) -> list[dict[str, Any]]:
    ids = [r.id for r in readings]
    findings: dict[int, list[InferenceFinding]] = {}
    verdicts: dict[int, list[ReadingVerdict]] = {}
    if ids:
        for finding in session.exec(
            select(InferenceFinding)
            .where(col(InferenceFinding.result_id).in_(ids))
            .order_by(col(InferenceFinding.number))
        ):
            findings.setdefault(finding.result_id, []).append(finding)
        for verdict in session.exec(
            select(ReadingVerdict).where(col(ReadingVerdict.result_id).in_(ids))
        ):
            verdicts.setdefault(verdict.result_id, []).append(verdict)
    return [
        reading_view(r, findings.get(r.id or 0, []), verdicts.get(r.id or 0, [])) for r in readings
    ]


def reading_view(
    reading: InferenceResult, findings: list[InferenceFinding], verdicts: list[ReadingVerdict]
) -> dict[str, Any]:
    """One reading as the API shows it."""
    current, per_finding = current_verdicts(verdicts)
    return {
        "id": reading.id,
        "model_name": reading.model_name,
        "model_version": reading.model_version,
        "series_instance_uid": reading.series_instance_uid,
        "status": reading.status,
        "lesion_count": reading.lesion_count,
        "lesion_volume_ml": reading.lesion_volume_ml,
        "seg_sop_instance_uid": reading.seg_sop_instance_uid,
        "sr_sop_instance_uid": reading.sr_sop_instance_uid,
        "key_sop_instance_uid": reading.key_sop_instance_uid,
        "findings": [
            {
                "tracking_uid": f.tracking_uid,
                "label": f.label,
                "volume_ml": f.volume_ml,
                "key_sop_instance_uid": f.key_sop_instance_uid,
                "verdict": verdict_view(per_finding.get(f.tracking_uid)),
            }
            for f in findings
        ],
        "verdict": verdict_view(current),
        # Some verdict's FHIR side is not sent yet (FHIR down): it is sent later, never lost.
        "fhir_owed": any(v.fhir_sent_at is None for v in verdicts),
    }
