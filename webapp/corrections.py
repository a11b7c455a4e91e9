"""Saving a corrected segmentation from the viewer: `POST /dicom-web/studies` (STOW-RS) with a
**viewer token** rather than an API token.

OHIF saves an edited SEG to its data source's STOW address with the token it reads with; the
gate's rules apply: the token must be a live viewer token sent with the cookie of the browser it
was issued to, of a radiologist, and the body exactly one SEG of the token's study that
`tasks.inference.corrections.check_correction` accepts. Anything else is refused with the
reason and audited, and nothing is stored. An accepted SEG goes through the same verified ingest
as every upload, then the reading it corrects gets the verdict `corrected` with the volumes the
SEG measures (`webapp.readings.judge`: FHIR, the worklists). The answer is PS3.18's STOW-RS
answer, as for any upload.
"""

from __future__ import annotations

import json
import shutil
import uuid
from typing import Any

from flask import Response, request
from werkzeug.http import parse_cookie

from common.db import User, Verdict, get_engine
from tasks.inference.corrections import CorrectionRefused, check_correction
from tasks.inference.verdicts import VerdictRequest
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import InputRef
from tasks.ingest.prepare import IngestStatus
from webapp import accounts
from webapp.audit import Action
from webapp.context import audit, db_session, deny_response, web_context
from webapp.multipart import MultipartError, parse_content_type, split_parts
from webapp.readings import judge
from webapp.tokens import TokenRejected, ViewerClaims, bound_to, verify_viewer_token
from webapp.viewer import browser_cookie_name

CORRECTION_REASON = "corrected segmentation saved from the viewer"


def viewer_claims() -> ViewerClaims | None:
    """The request's bearer token when it is a viewer token (whatever else holds); None when it
    is none (an API token, or nothing: the upload path decides)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 8192:
        return None
    try:
        return verify_viewer_token(web_context().viewer_key, token.strip())
    except TokenRejected:
        return None


def store_correction(claims: ViewerClaims) -> Response:
    """Store the body's one corrected SEG for the viewer's study; see the module's docstring."""
    ctx = web_context()
    username, study = claims.username, claims.study_instance_uid
    user = _radiologist_of(claims)
    if user is None:
        audit(Action.STOW, 403, username=username, study=study, reason="viewer may not save")
        return deny_response(403, "only a radiologist's viewer may save a corrected segmentation")
    try:
        related = parse_content_type(request.headers.get("Content-Type"))
    except MultipartError as err:
        audit(Action.STOW, 415, username=username, study=study, reason=str(err)[:200])
        return deny_response(415, str(err))
    folder = ctx.settings.data_dir / "uploads" / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    try:
        parts = list(split_parts(request.stream, related.boundary, folder, max_parts=2))
        if len(parts) != 1:
            raise CorrectionRefused(400, "save exactly one SEG at a time")
        with db_session() as session:
            correction = check_correction(session, parts[0].path, study)
        (outcome,) = ingest_batch(
            ctx.settings, [InputRef(str(parts[0].path))], remove_originals=True, in_process=True
        )
    except MultipartError as err:
        audit(Action.STOW, 400, username=username, study=study, reason=str(err)[:200])
        return deny_response(400, str(err))
    except CorrectionRefused as err:
        audit(Action.STOW, err.status, username=username, study=study, reason=str(err)[:255])
        return deny_response(err.status, str(err))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if outcome.status not in (IngestStatus.STORED, IngestStatus.DUPLICATE):
        reason = f"corrected SEG not stored: {outcome.status}, {outcome.reason}"
        audit(Action.STOW, 409, username=username, study=study, reason=reason[:255])
        return deny_response(409, reason)
    audit(Action.STOW, 200, username=username, study=study, reason="corrected SEG stored")
    wanted = VerdictRequest(
        Verdict.CORRECTED,
        None,
        CORRECTION_REASON,
        correction.sop_instance_uid,
        correction.volumes_json(),
    )
    judged = judge(user, study, correction.reading_id, wanted)
    body: dict[str, Any] = {
        "00081199": {  # ReferencedSOPSequence
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.66.4"]},
                    "00081155": {"vr": "UI", "Value": [correction.sop_instance_uid]},
                }
            ],
        }
    }
    if judged.reading is None:  # stored, but the verdict was refused (e.g. still reading)
        body["00081196"] = {"vr": "US", "Value": [0xB000]}  # WarningReason: coercion/other
    response = Response(json.dumps(body), status=200, content_type="application/dicom+json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _radiologist_of(claims: ViewerClaims) -> User | None:
    """The token's user when the token is bound to this browser, its session live and the
    study still theirs, and they are a radiologist; None otherwise."""
    ctx = web_context()
    cookie = parse_cookie(request.headers.get("Cookie", "")).get(
        browser_cookie_name(ctx.settings), ""
    )
    if not bound_to(claims, cookie):
        return None
    with get_engine(ctx.database_url).connect() as connection:
        if not accounts.viewer_token_allowed(connection, claims):
            return None
    with db_session() as session:
        user = accounts.find_user(session, claims.username)
    return user if user is not None and user.role == "radiologist" and user.active else None
