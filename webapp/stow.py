"""STOW-RS: `POST /dicom-web/studies` stores DICOM files through the verified ingest.

For users with the role `uploader` (and admins), signed in with an access token from
`/api/auth/login` (`Authorization: Bearer`). A viewer token is no upload: it is a radiologist's
viewer saving a corrected segmentation, under that path's own rules (webapp/corrections.py).
The body (`multipart/related; type="application/dicom"`, PS3.18 §10.5) is streamed part by
part into a private staging folder, never held in memory, and handed to the same `ingest_batch`
that `neuronova ingest` uses, a batch at a time: every instance is
transcoded to HTJ2K lossless where it is not, verified, stored in Orthanc and indexed before
the answer is sent; bad files and conflicts are kept in quarantine with their reason. The
answer is PS3.18's: `application/dicom+json` with a ReferencedSOPSequence (stored, or already
stored) and a FailedSOPSequence (FailureReason 0xC000 for a file that cannot be used, 0x0111
for a conflict with what the archive holds, 0x0110 for what the archive failed to take after
its retries); 200 all stored, 202 some failed, 409 none stored, 503 the archive took nothing.

The hand-offs (patient sync, the AI for MR) are the arrival watcher's: each study stored gets an
arrival row, as a C-STORE does once stable, so they run on the workers, durably, and the upload
is not held while the model reads. A body over NEURONOVA_STOW_MAX_BYTES gets 413 before it is
read. Every upload is audited (who, the first study, counts).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from flask import Blueprint, Response, request
from flask_jwt_extended import current_user, jwt_required
from werkzeug.exceptions import RequestEntityTooLarge

from common.db import Role, User, utcnow
from common.errors import UpstreamError
from common.settings import Settings
from tasks.archive.arrivals import record_uploaded_studies
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import InputRef
from tasks.ingest.prepare import FileOutcome, IngestStatus
from webapp.audit import Action
from webapp.context import audit, deny_response, web_context
from webapp.multipart import MultipartError, Part, parse_content_type, split_parts

log = logging.getLogger(__name__)

bp = Blueprint("stow", __name__)

UPLOAD_ROLES = frozenset({Role.UPLOADER, Role.ADMIN})
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# PS3.18 §10.5.3 / PS3.4 Annex GG: why an instance was not stored.
CANNOT_UNDERSTAND = 0xC000  # not DICOM, broken, over a limit: kept in quarantine
DUPLICATE_CONFLICT = 0x0111  # its UIDs are taken by other content or another patient
PROCESSING_FAILURE = 0x0110  # the archive failed: not stored, send it again
MAX_PARTS = 20_000


@dataclass(frozen=True)
class PartIds:
    """What a part's header says it is (None where it cannot be read)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None


@bp.post("/dicom-web/studies")
def store_instances() -> Response:
    """Store the body's instances; see the module's docstring. A viewer token is a reader
    saving a corrected segmentation from the viewer (webapp/corrections.py)."""
    from webapp.corrections import store_correction, viewer_claims

    claims = viewer_claims()
    if claims is not None:
        return store_correction(claims)
    return _store_upload()


@jwt_required()
def _store_upload() -> Response:
    user: User = current_user
    if user.role not in UPLOAD_ROLES:
        audit(Action.STOW, 403, username=user.username, reason="role may not upload")
        return deny_response(403, "not allowed")
    settings = web_context().settings
    request.max_content_length = settings.stow_max_bytes
    if (request.content_length or 0) > settings.stow_max_bytes:
        audit(Action.STOW, 413, username=user.username, reason="body over the limit")
        return _too_large(settings)
    try:
        related = parse_content_type(request.headers.get("Content-Type"))
    except MultipartError as err:
        audit(Action.STOW, 415, username=user.username, reason=str(err)[:200])
        return deny_response(415, f'{err}; send multipart/related; type="{DICOM}"')
    if related.type not in ("", DICOM):
        audit(Action.STOW, 415, username=user.username, reason=f"type {related.type}")
        return deny_response(415, f'only type="{DICOM}" parts are accepted')
    folder = settings.data_dir / "uploads" / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    try:
        return _store(settings, user, related.boundary, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # quarantine keeps copies of what failed


def _store(settings: Settings, user: User, boundary: bytes, folder: Path) -> Response:
    received_at = utcnow()
    try:
        parts = list(split_parts(request.stream, boundary, folder, max_parts=MAX_PARTS))
    except RequestEntityTooLarge:
        audit(Action.STOW, 413, username=user.username, reason="body over the limit")
        return _too_large(settings)
    except MultipartError as err:
        audit(Action.STOW, 400, username=user.username, reason=str(err)[:200])
        return deny_response(400, str(err))
    if not parts:
        audit(Action.STOW, 400, username=user.username, reason="no part")
        return deny_response(400, "the body holds no instance")
    ids = {str(part.path): _part_ids(part) for part in parts}
    outcomes, unavailable = _ingest_in_batches(settings, [str(part.path) for part in parts])
    if unavailable and not outcomes:
        # Nothing was kept: the archive did not answer; the sender still has every file.
        audit(Action.STOW, 503, username=user.username, reason="archive unavailable")
        answer = deny_response(503, "the archive is unavailable; send the study again later")
        answer.headers["Retry-After"] = "30"
        return answer
    stored = [o for o in outcomes if o.status in (IngestStatus.STORED, IngestStatus.DUPLICATE)]
    new_studies = {o.study_uid for o in outcomes if o.status == IngestStatus.STORED}
    record_uploaded_studies(settings, sorted(s for s in new_studies if s), received_at)
    total = len(outcomes) + len(unavailable)
    status = 200 if len(stored) == total else 202 if stored else 409
    audit(
        Action.STOW,
        status,
        username=user.username,
        study=next((o.study_uid for o in stored if o.study_uid), None),
        reason=f"{len(stored)} stored, {total - len(stored)} failed",
    )
    body = stow_response(outcomes, ids, settings.gateway_url.rstrip("/"), unavailable)
    response = Response(
        json.dumps(body, separators=(",", ":")), status=status, content_type=DICOM_JSON
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _ingest_in_batches(settings: Settings, paths: list[str]) -> tuple[list[FileOutcome], list[str]]:
    """Ingest the parts a batch at a time (memory stays bounded for a large study); once the
    archive fails a batch (after its retries), that batch and the rest are returned as not
    stored: the sender may send them again (what was stored is a duplicate then)."""
    outcomes: list[FileOutcome] = []
    size = settings.ingest_batch_size
    for start in range(0, len(paths), size):
        batch = paths[start : start + size]
        try:
            outcomes += ingest_batch(
                settings, [InputRef(p) for p in batch], remove_originals=True, in_process=True
            )
        except UpstreamError as err:
            log.warning(
                "STOW-RS: the archive failed a batch, %d parts not stored: %s",
                len(paths) - start,
                err,
            )
            return outcomes, paths[start:]
    return outcomes, []


def _too_large(settings: Settings) -> Response:
    return deny_response(
        413, f"the body is over {settings.stow_max_bytes} bytes (NEURONOVA_STOW_MAX_BYTES)"
    )


def _part_ids(part: Part) -> PartIds:
    """The UIDs from the part's header, for the answer; nothing when it is not DICOM."""
    try:
        ds = pydicom.dcmread(part.path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        meta = ds.file_meta
        return PartIds(
            str(meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID") or "") or None,
            str(meta.get("MediaStorageSOPInstanceUID") or "") or None,
        )
    except Exception:
        return PartIds(None, None)


def stow_response(
    outcomes: list[FileOutcome],
    ids: dict[str, PartIds],
    base_url: str,
    unavailable: list[str] | None = None,
) -> dict[str, Any]:
    """The PS3.18 STOW-RS response dataset, as DICOM JSON (`unavailable`: parts the archive
    did not take, failed with 0x0110)."""
    referenced, failed = [], []
    for path in unavailable or []:
        part = ids.get(path, PartIds(None, None))
        failed.append(
            {
                "00081150": _uid(part.sop_class_uid),
                "00081155": _uid(part.sop_instance_uid),
                "00081197": {"vr": "US", "Value": [PROCESSING_FAILURE]},
            }
        )
    for outcome in outcomes:
        part = ids.get(outcome.path, PartIds(None, None))
        sop_uid = outcome.sop_instance_uid or part.sop_instance_uid
        item: dict[str, Any] = {
            "00081150": _uid(part.sop_class_uid),  # ReferencedSOPClassUID
            "00081155": _uid(sop_uid),  # ReferencedSOPInstanceUID
        }
        if outcome.status in (IngestStatus.STORED, IngestStatus.DUPLICATE):
            if outcome.study_uid and outcome.series_uid and sop_uid:
                url = (
                    f"{base_url}/dicom-web/studies/{outcome.study_uid}"
                    f"/series/{outcome.series_uid}/instances/{sop_uid}"
                )
                item["00081190"] = {"vr": "UR", "Value": [url]}  # RetrieveURL
            referenced.append(item)
        else:
            reason = (
                DUPLICATE_CONFLICT if outcome.status == IngestStatus.CONFLICT else CANNOT_UNDERSTAND
            )
            item["00081197"] = {"vr": "US", "Value": [reason]}  # FailureReason
            failed.append(item)
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}  # FailedSOPSequence
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}  # ReferencedSOPSequence
    return body


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
