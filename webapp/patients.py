"""`GET /api/patients/<mrn>`: a patient's FHIR Patient for logged-in users.

A cache hit is answered straight from the database; a miss runs the same resolution as the
`sync_patient` flow (FHIR, then OpenEMR, with write-backs). Every look-up is audited, with the
MRN and where the answer came from; 404 when the MRN is nowhere.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask_jwt_extended import current_user, jwt_required

from common.db import User
from common.errors import UpstreamError
from tasks.patients.fhir import MultiplePatientsForMrn
from tasks.patients.sync import cached_lookup, look_up_patient
from webapp.audit import Action
from webapp.context import audit, deny_response, web_context

bp = Blueprint("patients", __name__, url_prefix="/api/patients")
MAX_MRN_LENGTH = 64


@bp.get("/<mrn>")
@jwt_required()
def get_patient(mrn: str) -> Response | tuple[Response, int]:
    user: User = current_user
    who = user.username
    if not mrn or len(mrn) > MAX_MRN_LENGTH or not mrn.isprintable():
        audit(Action.PATIENT_LOOKUP, 404, username=who, reason="malformed MRN")
        return deny_response(404, "not found"), 404
    settings = web_context().settings
    lookup = cached_lookup(settings, mrn)
    if lookup is None:
        try:
            lookup = look_up_patient(settings, mrn)
        except MultiplePatientsForMrn:
            audit(
                Action.PATIENT_LOOKUP,
                409,
                username=user.username,
                patient=mrn,
                reason="flagged for merge",
            )
            return deny_response(
                409, "several FHIR Patients carry this MRN; flagged for a merge"
            ), 409
        except UpstreamError as err:
            audit(Action.PATIENT_LOOKUP, 503, username=who, patient=mrn, reason=str(err)[:200])
            return deny_response(503, "patient sources unavailable; try again"), 503
    if lookup.resource is None:
        audit(Action.PATIENT_LOOKUP, 404, username=who, patient=mrn, reason="nowhere")
        return deny_response(404, "not found"), 404
    audit(
        Action.PATIENT_LOOKUP,
        200,
        username=user.username,
        patient=mrn,
        reason=f"from {lookup.source}",
    )
    response = jsonify(lookup.resource)
    response.headers["Content-Type"] = "application/fhir+json"
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-NeuroNova-Source"] = lookup.source
    return response
