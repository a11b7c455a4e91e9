"""The study list and viewer links (`/api/studies`, `/api/studies/<uid>/viewer-link`)."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify
from flask_jwt_extended import current_user, get_jwt, jwt_required

from common.db import User
from tasks.dicom.uid import is_uid
from webapp import accounts
from webapp.audit import Action
from webapp.context import audit, db_session, deny_response, web_context
from webapp.tokens import issue_viewer_link

bp = Blueprint("links", __name__, url_prefix="/api/studies")


@bp.get("")
@jwt_required()
def list_studies() -> Response:
    """The studies the caller may open, from the index that ingest fills."""
    user: User = current_user
    with db_session() as session:
        studies = accounts.studies_for(session, user)
    audit(Action.STUDY_LIST, 200, username=user.username, now=False)
    return jsonify(
        {
            "studies": [
                {
                    "study_instance_uid": s.study_instance_uid,
                    "patient_id": s.patient_id,
                    "study_date": s.study_date,
                    "accession_number": s.accession_number,
                    "modalities": s.modalities.split("\\") if s.modalities else [],
                }
                for s in studies
            ]
        }
    )


@bp.post("/<study_uid>/viewer-link")
@jwt_required()
def viewer_link(study_uid: str) -> Response | tuple[Response, int]:
    """A one-use link that opens this study in OHIF for this user, in the first browser that
    opens it (webapp/viewer.py), until it expires or they log out."""
    user: User = current_user
    if not is_uid(study_uid):
        audit(Action.VIEWER_LINK, 403, username=user.username, reason="malformed study UID")
        return deny_response(403, "not allowed"), 403
    with db_session() as session:
        allowed = accounts.may_open_study(session, user, study_uid)
    if not allowed:
        # Unknown and forbidden studies get the same answer: no probing of the index.
        audit(Action.VIEWER_LINK, 403, username=user.username, study=study_uid, reason="policy")
        return deny_response(403, "not allowed"), 403
    ctx = web_context()
    token, claims = issue_viewer_link(
        ctx.viewer_key,
        username=user.username,
        study_instance_uid=study_uid,
        sid=get_jwt()["sid"],
        ttl_s=ctx.settings.viewer_link_ttl_s,
    )
    # In the fragment: browsers never send it, so no server or proxy on the way can log it.
    url = f"{ctx.settings.gateway_url.rstrip('/')}/view#{urlencode({'token': token})}"
    audit(Action.VIEWER_LINK, 200, username=user.username, study=study_uid)
    return jsonify({"url": url, "expires_at": claims.expires_at.isoformat()})
