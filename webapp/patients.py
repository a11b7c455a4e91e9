"""`GET /api/patients/<mrn>`: a patient's FHIR Patient, under the same policy as their studies.

Admins and radiologists read every patient; a clinician reads the patients on their care list.
A refused MRN and an unknown one get the same 404 (a caller cannot probe who exists), and the
policy is checked before anything is looked up, so a refusal leaves no cache row and no write
to FHIR or the EMR. MRNs follow one grammar (`tasks.patients.mrn`). A cache hit is answered from
the database; a miss runs the `sync_patient` resolution (FHIR, then OpenEMR, with write-backs)
and counts against the caller's `patient_lookups_per_minute`. Every answer is audited, with the
MRN, why, and where it came from.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, jsonify
from flask_jwt_extended import current_user, jwt_required
from sqlalchemy import func
from sqlmodel import select

from common.db import AuditEvent, User, utcnow
from common.errors import UpstreamError
from tasks.patients.fhir import MultiplePatientsForMrn
from tasks.patients.mrn import is_mrn
from tasks.patients.sync import cached_lookup, look_up_patient
from webapp import accounts
from webapp.audit import Action
from webapp.context import audit, db_session, deny_response, web_context

bp = Blueprint("patients", __name__, url_prefix="/api/patients")

# Audit reasons of look-ups that missed the cache: what the per-user limit counts.
_UPSTREAM_REASONS = ("from fhir", "from emr", "nowhere")


@bp.get("/<mrn>")
@jwt_required()
def get_patient(mrn: str) -> Response | tuple[Response, int]:
    user: User = current_user
    who = user.username
    if not is_mrn(mrn):
        # Not recorded as the patient: it is not an MRN, and may be an attacker's string.
        audit(Action.PATIENT_LOOKUP, 404, username=who, reason="malformed MRN")
        return deny_response(404, "not found"), 404
    with db_session() as session:
        allowed = accounts.may_read_patient(session, user, mrn)
    if not allowed:
        audit(Action.PATIENT_LOOKUP, 404, username=who, patient=mrn, reason="not on care list")
        return deny_response(404, "not found"), 404
    settings = web_context().settings
    lookup = cached_lookup(settings, mrn)
    if lookup is None:
        if _upstream_lookups_last_minute(who) >= settings.patient_lookups_per_minute:
            audit(Action.PATIENT_LOOKUP, 429, username=who, patient=mrn, reason="rate limited")
            response = deny_response(429, "too many patient look-ups; try again in a minute")
            response.headers["Retry-After"] = "60"
            return response, 429
        try:
            lookup = look_up_patient(settings, mrn)
        except MultiplePatientsForMrn:
            audit(Action.PATIENT_LOOKUP, 409, username=who, patient=mrn, reason="flagged for merge")
            return deny_response(
                409, "several FHIR Patients carry this MRN; flagged for a merge"
            ), 409
        except UpstreamError as err:
            audit(Action.PATIENT_LOOKUP, 503, username=who, patient=mrn, reason=str(err)[:200])
            return deny_response(503, "patient sources unavailable; try again"), 503
    if lookup.resource is None:
        audit(Action.PATIENT_LOOKUP, 404, username=who, patient=mrn, reason="nowhere")
        return deny_response(404, "not found"), 404
    audit(Action.PATIENT_LOOKUP, 200, username=who, patient=mrn, reason=f"from {lookup.source}")
    response = jsonify(lookup.resource)
    response.headers["Content-Type"] = "application/fhir+json"
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-NeuroNova-Source"] = lookup.source
    return response


def _upstream_lookups_last_minute(username: str) -> int:
    """The caller's look-ups that went to FHIR or the EMR in the last minute (from the audit
    log, written before each answer, so every webapp worker counts the same rows)."""
    since = utcnow() - timedelta(minutes=1)
    query = select(func.count()).where(
        AuditEvent.username == username,
        AuditEvent.action == Action.PATIENT_LOOKUP,
        AuditEvent.at >= since,
        AuditEvent.reason.in_(_UPSTREAM_REASONS),  # type: ignore[union-attr]
    )
    with db_session() as session:
        return int(session.exec(query).one())
