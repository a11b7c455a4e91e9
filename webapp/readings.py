"""A study's AI readings and the readers' verdicts on them (IHE AIRA), for the API and the
worklist's review panel:

- `GET /api/studies/<study_uid>/readings`: every reading with its findings and their current
  verdicts, for anyone who may open the study (clinicians see verdicts);
- `POST /api/studies/<study_uid>/readings/<id>/verdict` with
  `{"verdict": "accepted"|"rejected"|"corrected", "finding": <tracking uid>|null, "reason": …}`:
  radiologists only, on studies they may open; 200 with the reading, 400 a bad body (named),
  403 a role or study not allowed (audited), 404 an unknown reading or finding, 409 a reading
  still being made.

The verdict is committed first; its FHIR side is then sent at once with a short time-out, and
when FHIR cannot take it the reading says `fhir_owed` (sent later, never lost). Open worklists
hear of it on the alert stream (`ai-verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask_jwt_extended import current_user, jwt_required
from sqlmodel import Session

from common.db import ReadingVerdict, Role, Study, User
from common.transactions import in_transaction
from tasks.dicom.uid import is_uid
from tasks.inference.alerts import announce_verdict
from tasks.inference.verdict_fhir import send_verdicts
from tasks.inference.verdicts import (
    VerdictRefused,
    VerdictRequest,
    one_reading,
    parse_verdict,
    readings_of_study,
    record_verdict,
)
from tasks.patients.fhir import FhirClient
from webapp import accounts
from webapp.audit import Action
from webapp.context import audit, db_session, deny_response, web_context

bp = Blueprint("readings", __name__, url_prefix="/api/studies")

# A verdict's page or API answer waits at most this long for FHIR; past it the update is owed.
FHIR_WAIT_S = 5.0


@bp.get("/<study_uid>/readings")
@jwt_required()
def list_readings(study_uid: str) -> Response | tuple[Response, int]:
    """The study's readings, findings and verdicts, for a user who may open the study."""
    user: User = current_user
    readings = study_readings(user, study_uid)
    if readings is None:
        return deny_response(403, "not allowed"), 403
    return jsonify({"readings": readings})


@bp.post("/<study_uid>/readings/<int:reading_id>/verdict")
@jwt_required()
def post_verdict(study_uid: str, reading_id: int) -> Response | tuple[Response, int]:
    """A radiologist's verdict on a reading or one of its findings."""
    user: User = current_user
    judged = give_verdict(user, study_uid, reading_id, request.get_json(silent=True))
    if judged.reading is None:
        return deny_response(judged.status, judged.message), judged.status
    return jsonify(judged.reading)


def study_readings(user: User, study_uid: str) -> list[dict[str, Any]] | None:
    """The readings (API shape) of a study the user may open; None (audited) otherwise."""
    with db_session() as session:
        allowed = is_uid(study_uid) and accounts.may_open_study(session, user, study_uid)
        readings = readings_of_study(session, study_uid) if allowed else None
    if readings is None:
        # Unknown and forbidden studies get the same answer: no probing of the index.
        audit(Action.READINGS, 403, username=user.username, reason="policy")
        return None
    audit(Action.READINGS, 200, username=user.username, study=study_uid, now=False)
    return readings


@dataclass(frozen=True)
class Judged:
    """A verdict's outcome: the reading as it now stands, or the refusal's status and words."""

    status: int
    message: str = ""
    reading: dict[str, Any] | None = None


def give_verdict(user: User, study_uid: str, reading_id: int, body: object) -> Judged:
    """Check, record, send to FHIR and announce one verdict (the API and the review panel)."""
    refused = _may_judge(user, study_uid)
    if refused is not None:
        return refused
    try:
        wanted = parse_verdict(body)
    except VerdictRefused as err:
        audit(Action.VERDICT, err.status, username=user.username, study=study_uid, reason=str(err))
        return Judged(err.status, str(err))
    return _record(user, study_uid, reading_id, wanted)


def _may_judge(user: User, study_uid: str) -> Judged | None:
    """None when the user may give verdicts on the study; else the refusal (audited)."""
    if user.role != Role.RADIOLOGIST:
        audit(Action.VERDICT, 403, username=user.username, reason="only radiologists judge")
        return Judged(403, "only radiologists give verdicts on AI readings")
    with db_session() as session:
        allowed = is_uid(study_uid) and accounts.may_open_study(session, user, study_uid)
    if not allowed:
        audit(Action.VERDICT, 403, username=user.username, reason="policy")
        return Judged(403, "not allowed")
    return None


def judge(user: User, study_uid: str, reading_id: int, wanted: VerdictRequest) -> Judged:
    """A verdict made elsewhere (a corrected SEG saved from the viewer), under the same rules:
    a radiologist who may open the study; then as `give_verdict`."""
    refused = _may_judge(user, study_uid)
    if refused is not None:
        return refused
    return _record(user, study_uid, reading_id, wanted)


def _record(user: User, study_uid: str, reading_id: int, wanted: VerdictRequest) -> Judged:
    """Record a verdict of a user `_may_judge` allowed, send its FHIR side (owed when FHIR
    cannot take it now) and tell the open worklists."""
    ctx = web_context()
    try:

        def record(session: Session) -> tuple[ReadingVerdict, str]:
            row = record_verdict(session, study_uid, reading_id, wanted, user)
            study = session.get(Study, study_uid)
            return row, study.patient_id if study else ""

        row, patient_id = in_transaction(ctx.database_url, record)
    except VerdictRefused as err:
        audit(Action.VERDICT, err.status, username=user.username, study=study_uid, reason=str(err))
        return Judged(err.status, str(err))
    audit(
        Action.VERDICT,
        200,
        username=user.username,
        study=study_uid,
        patient=patient_id,
        reason=_audit_words(wanted, reading_id),
    )
    fhir = FhirClient(ctx.settings.fhir_url, timeout_s=FHIR_WAIT_S, max_attempts=1)
    with fhir:
        send_verdicts(ctx.settings, reading_id, fhir=fhir)
    announce_verdict(
        ctx.settings,
        study_uid,
        patient_id,
        {"reading": reading_id, "verdict": row.verdict, "finding": row.finding_tracking_uid},
    )
    return Judged(200, reading=_reading(reading_id))


def _audit_words(wanted: VerdictRequest, reading_id: int) -> str:
    what = f"finding {wanted.finding}" if wanted.finding else "the whole reading"
    return f"{wanted.verdict} {what} of reading {reading_id}"[:255]


def _reading(reading_id: int) -> dict[str, Any]:
    with db_session() as session:
        reading = one_reading(session, reading_id)
    assert reading is not None  # its verdict was just recorded
    return reading
