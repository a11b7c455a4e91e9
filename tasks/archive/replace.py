"""Replace an instance in Orthanc with its verified HTJ2K copy, never losing the original.

Orthanc keys instances by SOPInstanceUID and we run it with `OverwriteInstances: false`, so a
replacement is delete-then-store. The original is first written durably to the backup folder;
if the store or its read-back fails, the original is put back. A crash between the delete and
the store leaves the backup on disk, and `recover_backups` (run before every check) restores it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from pathlib import Path

from common.errors import NeuroNovaError, VerificationError
from tasks.archive.orthanc import OrthancClient, StoredInstance, orthanc_study_id
from tasks.archive.quarantine import write_durably
from tasks.dicom.parse import parse_dicom

log = logging.getLogger(__name__)

# A backup younger than this may belong to a replacement still in progress in another run.
BACKUP_GRACE_S = 600.0


def replace_in_orthanc(
    client: OrthancClient,
    orthanc_id: str,
    *,
    original: bytes,
    replacement: bytes,
    backup_dir: Path,
) -> tuple[StoredInstance, str]:
    """Swap `original` for `replacement`; return the new instance and its read-back sha256."""
    backup = _write_backup(backup_dir, orthanc_id, original)
    try:
        client.delete_instance(orthanc_id)
        stored = client.store_instance(replacement)
        back = hashlib.sha256(client.get_instance_file(stored.orthanc_id)).hexdigest()
        if back != hashlib.sha256(replacement).hexdigest():
            raise VerificationError(f"read-back of replacement {stored.orthanc_id} differs")
    except (NeuroNovaError, OSError):
        _restore(client, orthanc_id, original)
        backup.unlink(missing_ok=True)
        raise
    backup.unlink(missing_ok=True)
    return stored, back


def _restore(client: OrthancClient, orthanc_id: str, original: bytes) -> None:
    """Put the original back after a failed replacement (the backup stays if this fails too)."""
    if client.instance_exists(orthanc_id):  # a replacement that failed its read-back
        client.delete_instance(orthanc_id)
    client.store_instance(original)
    log.warning("replacement of %s failed; original restored", orthanc_id)


def _write_backup(backup_dir: Path, orthanc_id: str, data: bytes) -> Path:
    """A durable copy, named per replacement so two runs replacing one instance never share it."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    path = backup_dir / f"{orthanc_id}.{uuid.uuid4().hex}.dcm"
    write_durably(path, data)
    return path


def recover_backups(
    client: OrthancClient,
    backup_dir: Path,
    *,
    grace_s: float = BACKUP_GRACE_S,
    interrupted_study: str | None = None,
) -> int:
    """Re-store originals whose replacement never arrived; return how many were restored.

    `interrupted_study` (Orthanc's study ID): a study whose last run is known to have died
    (a re-run of a crashed arrival); its backups are recovered at once, not after the grace.
    """
    restored = 0
    if not backup_dir.is_dir():
        return 0
    for backup in sorted(backup_dir.glob("*.dcm")):
        data = backup.read_bytes()
        parsed = parse_dicom(data)
        of_interrupted = interrupted_study is not None and interrupted_study == orthanc_study_id(
            str(parsed.get("PatientID", "")), str(parsed.StudyInstanceUID)
        )
        if not of_interrupted and time.time() - backup.stat().st_mtime < grace_s:
            continue
        sop_uid = str(parsed.SOPInstanceUID)
        if client.lookup(sop_uid) is None:
            client.store_instance(data)
            restored += 1
            log.warning("restored original %s from backup", backup.name)
        backup.unlink(missing_ok=True)
    return restored
