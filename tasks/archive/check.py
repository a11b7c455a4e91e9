"""The unit of the HTJ2K check: one study in Orthanc → every instance HTJ2K lossless, indexed.

Instances that arrived some other way (C-STORE, a tool that POSTed straight to Orthanc) are
transcoded, verified bit for bit and swapped in place (`tasks.archive.replace`); lossy and other
kept-as-is instances are indexed with the reason; invalid ones are copied to quarantine and
left in Orthanc (nothing is deleted on doubt). An instance whose study belongs to another
patient, or whose series to another study, than the index records (`tasks.archive.identity`)
is a conflict: copied to quarantine, then removed from Orthanc, so that nothing is stored (or
served) beside the first patient's study.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, TypedDict

from common.db import Instance, session_scope
from common.errors import IngestError, NeuroNovaError, UpstreamError
from common.logs import carry_context
from common.settings import Settings
from tasks.archive.identity import KnownIdentities
from tasks.archive.index import IndexEntry, entry_for, index_instances, known_instances
from tasks.archive.orthanc import OrthancClient, StoredInstance
from tasks.archive.quarantine import quarantine_bytes
from tasks.archive.replace import replace_in_orthanc
from tasks.dicom.htj2k import HTJ2K_LOSSLESS_SYNTAXES
from tasks.dicom.parse import parse_dicom, validate_identifiers
from tasks.dicom.transcode import TranscodeAction, transcode_to_htj2k

log = logging.getLogger(__name__)


class CheckStatus(StrEnum):
    """What the check did to one instance; `neuronova check-htj2k --json` prints the value."""

    OK = "ok"  # already verified HTJ2K lossless and indexed
    REPLACED = "replaced"  # transcoded, verified and swapped in place
    INDEXED = "indexed"  # HTJ2K lossless already, now in the index
    KEPT = "kept"  # stored as it is (lossy, colour, unsupported): never relabelled lossless
    INVALID = "invalid"  # could not be read or lacks an identifier: quarantined
    CONFLICT = "conflict"  # other content under its SOP UID, or another patient's study
    FAILED = "failed"  # an error this run could not get past: re-run the check


class CheckInstanceReport(TypedDict):
    """One instance in `neuronova check-htj2k --json`."""

    orthanc_id: str
    status: CheckStatus
    sop_instance_uid: str | None
    transfer_syntax_before: str | None
    transfer_syntax_after: str | None
    reason: str | None


@dataclass
class CheckOutcome:
    """What the check did to one instance."""

    orthanc_id: str
    status: CheckStatus
    sop_instance_uid: str | None = None
    transfer_syntax_before: str | None = None
    transfer_syntax_after: str | None = None
    reason: str | None = None

    def as_dict(self) -> CheckInstanceReport:
        return CheckInstanceReport(**asdict(self))  # type: ignore[typeddict-item]


@dataclass
class _Work:
    outcome: CheckOutcome
    entry: IndexEntry | None = None
    quarantine: bytes | None = None
    remove_from_orthanc: bool = False  # once the quarantined copy is committed (conflicts)
    upstream_error: UpstreamError | None = None


def check_study(settings: Settings, client: OrthancClient, study_id: str) -> list[CheckOutcome]:
    """Bring one Orthanc study to verified HTJ2K; raise the first upstream error at the end."""
    instances = client.study_instances(study_id)
    with session_scope(settings.resolved_database_url) as session:
        known = known_instances(session, (_sop_uid(i) for i in instances))

    def check(info: dict[str, Any]) -> _Work:
        return _check_instance(
            settings, client, _located(info, study_id), known.get(_sop_uid(info))
        )

    with ThreadPoolExecutor(max_workers=settings.ingest_workers) as pool:
        work = list(pool.map(carry_context(check), instances))
    with session_scope(settings.resolved_database_url) as session:
        index_instances(session, (w.entry for w in work if w.entry is not None))
        for w in work:
            if w.quarantine is not None:
                quarantine_bytes(
                    session,
                    settings.quarantine_dir,
                    data=w.quarantine,
                    source=f"orthanc:/instances/{w.outcome.orthanc_id}",
                    name=f"{w.outcome.orthanc_id}.dcm",
                    reason=w.outcome.reason or "invalid",
                    kind="conflict" if w.remove_from_orthanc else "quarantined",
                    sop_instance_uid=w.outcome.sop_instance_uid,
                )
    for w in work:
        if w.remove_from_orthanc:
            _remove_conflict(client, w)
    errors = [w.upstream_error for w in work if w.upstream_error is not None]
    if errors:
        raise errors[0]
    return [w.outcome for w in work]


def _remove_conflict(client: OrthancClient, work: _Work) -> None:
    """Take a conflicting instance out of Orthanc; its bytes are in quarantine already."""
    try:
        client.delete_instance(work.outcome.orthanc_id)
    except UpstreamError as err:
        # Not indexed, so the gate does not serve it; the next check removes it.
        work.outcome.reason = f"{work.outcome.reason}; still in Orthanc: {err}"
        work.upstream_error = err


def _sop_uid(info: dict[str, Any]) -> str:
    return str(info.get("MainDicomTags", {}).get("SOPInstanceUID", ""))


def _located(info: dict[str, Any], study_id: str) -> StoredInstance:
    """Where an instance lives in Orthanc, from the study's instance listing."""
    return StoredInstance(info["ID"], "AlreadyStored", info["ParentSeries"], study_id)


def _already_settled(known: Instance, orthanc_id: str, ts: str) -> bool:
    """Indexed as this very Orthanc instance in this transfer syntax, and nothing left to do:
    HTJ2K lossless, or kept as it is for a recorded reason (lossy, colour, no pixels …)."""
    return (
        known.orthanc_id == orthanc_id
        and known.transfer_syntax == ts
        and (ts in HTJ2K_LOSSLESS_SYNTAXES or known.action != TranscodeAction.TRANSCODED)
    )


def _check_instance(
    settings: Settings, client: OrthancClient, located: StoredInstance, known: Instance | None
) -> _Work:
    orthanc_id = located.orthanc_id
    outcome = CheckOutcome(orthanc_id=orthanc_id, status=CheckStatus.FAILED)
    work = _Work(outcome)
    try:
        ts = client.instance_transfer_syntax(orthanc_id)
        outcome.transfer_syntax_before = outcome.transfer_syntax_after = ts
        if known is not None and _already_settled(known, orthanc_id, ts):
            outcome.status, outcome.sop_instance_uid = CheckStatus.OK, known.sop_instance_uid
            return work
        if known is not None and known.orthanc_id != orthanc_id:
            # Same SOPInstanceUID under another patient/study/series: never index over it.
            outcome.status, outcome.sop_instance_uid = CheckStatus.CONFLICT, known.sop_instance_uid
            outcome.reason = "SOPInstanceUID already indexed for another instance; left as is"
            return work
        _bring_to_htj2k(settings, client, located, work)
    except UpstreamError as err:
        outcome.reason = str(err)
        work.upstream_error = err
    except NeuroNovaError as err:  # verification failed: the original was restored
        outcome.reason = str(err)
    return work


def _bring_to_htj2k(
    settings: Settings, client: OrthancClient, stored: StoredInstance, work: _Work
) -> None:
    outcome, orthanc_id = work.outcome, stored.orthanc_id
    original = client.get_instance_file(orthanc_id)
    try:
        ds = parse_dicom(original)
        ids = validate_identifiers(ds)
        result = transcode_to_htj2k(ds, bytes_in=len(original))
    except IngestError as err:
        outcome.status, outcome.reason = CheckStatus.INVALID, str(err)
        work.quarantine = original
        return
    outcome.sop_instance_uid = ids.sop_uid
    with session_scope(settings.resolved_database_url) as session:
        mismatch = KnownIdentities.from_index(session, [ids]).mismatch(ids)
    if mismatch is not None:
        outcome.status, outcome.reason = CheckStatus.CONFLICT, mismatch
        work.quarantine, work.remove_from_orthanc = original, True
        return
    if result.action == TranscodeAction.TRANSCODED:
        stored, stored_sha = replace_in_orthanc(
            client,
            orthanc_id,
            original=original,
            replacement=result.data,
            backup_dir=settings.backup_dir,
        )
        outcome.status, outcome.transfer_syntax_after = CheckStatus.REPLACED, result.transfer_syntax
    else:
        stored_sha = hashlib.sha256(original).hexdigest()
        outcome.status = (
            CheckStatus.INDEXED
            if result.action == TranscodeAction.ALREADY_HTJ2K
            else CheckStatus.KEPT
        )
        outcome.reason = result.reason
    work.entry = entry_for(ids, result, stored, stored_sha256=stored_sha, source="orthanc")
