"""The unit of ingest: one batch of inputs → verified HTJ2K instances in Orthanc, indexed.

Per instance: parse → validate → transcode (decoded again and compared bit for bit) → store →
read back and compare bytes → index. A batch runs in phases: prepare (thread pool), one index
look-up, upload (thread pool, overlapping with Orthanc's own work), one database transaction.
Bad inputs are quarantined with a reason. A different payload under a known SOPInstanceUID, or
a study or series under another patient or study than the index records
(`tasks.archive.identity`), is a conflict: quarantined, nothing stored or overwritten. A
transient Orthanc failure fails the batch after what is final was written, so that Prefect
retries it (every step is idempotent: a retry or a re-run converges).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from sqlmodel import Session

from common.db import Instance, session_scope
from common.errors import (
    IngestError,
    PermanentUpstreamError,
    TransientUpstreamError,
    VerificationError,
)
from common.logs import carry_context
from common.settings import Settings
from tasks.archive.identity import KnownIdentities
from tasks.archive.index import IndexEntry, entry_for, index_instances, known_instances
from tasks.archive.orthanc import OrthancClient, StoredInstance
from tasks.archive.quarantine import quarantine_bytes
from tasks.archive.replace import replace_in_orthanc
from tasks.dicom.htj2k import HTJ2K_LOSSLESS_SYNTAXES
from tasks.dicom.parse import content_sha256, parse_dicom
from tasks.dicom.transcode import TranscodeAction, transcode_to_htj2k
from tasks.ingest.decode_guard import DecodeGuard
from tasks.ingest.inputs import InputRef, read_input
from tasks.ingest.limits import IngestLimits
from tasks.ingest.prepare import (
    FileOutcome,
    IngestStatus,
    PreparedInput,
    outcome_for,
    prepare_inputs,
)
from tasks.ingest.workers import discard_pool, prepare_pool, running_pool

log = logging.getLogger(__name__)


def ingest_batch(
    settings: Settings,
    refs: Sequence[InputRef],
    *,
    remove_originals: bool = False,
    in_process: bool = False,
) -> list[FileOutcome]:
    """Ingest `refs`. Raises the first `UpstreamError` after recording everything final.

    `in_process`: prepare the inputs on this process's threads, never in worker processes
    (the webapp: a gunicorn worker starts no process pool of its own).
    """
    limits = IngestLimits.from_settings(settings)
    guard = DecodeGuard(settings.data_dir / "decoding")
    # A few inputs (a SEG, a small STOW request) are not worth starting the workers for.
    workers = None if in_process else running_pool()
    if workers is None and not in_process and len(refs) > _FEW:
        workers = prepare_pool(settings.ingest_processes)
    items: list[PreparedInput] = []
    with (
        ThreadPoolExecutor(max_workers=settings.ingest_workers) as store_pool,
        OrthancClient.from_settings(settings) as client,
    ):

        def store(item: PreparedInput, known: Instance | None) -> None:
            _store(item, client, known, settings.backup_dir)

        # A pipeline: inputs are prepared in order in the worker processes while those before
        # them upload, so that Orthanc works while we transcode. The decisions that need the
        # index or the earlier inputs are taken per chunk, in input order, before uploading.
        chunks = [refs[start : start + _CHUNK] for start in range(0, len(refs), _CHUNK)]
        pending = [_submit(workers, chunk, limits, guard) for chunk in chunks]
        screen = _Screen()
        uploads = []
        for future, chunk_refs in zip(pending, chunks, strict=True):
            chunk = _prepared(future, chunk_refs, limits, guard, workers)
            items.extend(chunk)
            known = screen.decide(settings, chunk)
            uploads += [
                store_pool.submit(carry_context(store), item, known.get(_sop(item)))
                for item in chunk
            ]
        for upload in uploads:
            upload.result()
    with session_scope(settings.resolved_database_url) as session:
        _record(settings, session, items)
    errors = [i.upstream_error for i in items if i.upstream_error is not None]
    if errors:
        # Originals stay until the batch succeeds: its retry reads them again.
        raise errors[0]
    if remove_originals:
        _remove_originals(items)
    return [i.outcome for i in items if i.outcome is not None]


def _submit(
    workers: ProcessPoolExecutor | None,
    refs: Sequence[InputRef],
    limits: IngestLimits,
    guard: DecodeGuard,
) -> Future[list[PreparedInput]]:
    """Hand a chunk of inputs to the workers, or prepare it here when there are none (a pool
    that broke meanwhile answers as its futures do)."""
    try:
        if workers is not None:
            return workers.submit(prepare_inputs, list(refs), limits, guard)
        done: Future[list[PreparedInput]] = Future()
        done.set_result(prepare_inputs(refs, limits, guard))
        return done
    except BrokenProcessPool as err:
        failed: Future[list[PreparedInput]] = Future()
        failed.set_exception(err)
        return failed


def _prepared(
    future: Future[list[PreparedInput]],
    refs: Sequence[InputRef],
    limits: IngestLimits,
    guard: DecodeGuard,
    workers: ProcessPoolExecutor | None,
) -> list[PreparedInput]:
    """The prepared inputs, or, when their worker process died, the inputs prepared here.

    A worker that dies (a decoder crash, the memory killer) breaks the pool and every input
    still in it. Here the decode guard decides: an input whose mark is left (it, or one
    decoded beside it, was being decoded) is quarantined without being decoded again; the
    others are prepared in this process. The next batch gets a new pool.
    """
    try:
        return future.result()
    except BrokenProcessPool:
        log.warning("an ingest worker process died; preparing %d inputs here", len(refs))
        if workers is not None:
            discard_pool(workers)
        return prepare_inputs(refs, limits, guard)


# Inputs per worker call and per screening: small enough that uploads start early, large
# enough that the round trips to the workers and the two index queries per chunk stay cheap.
_CHUNK = 8
# Batches up to this size are prepared in this process unless the workers run already.
_FEW = 2 * _CHUNK


class _Screen:
    """The decisions taken before an upload, chunk after chunk in input order, with what the
    earlier chunks of the batch taught: repeats within the batch, known instances, identity."""

    def __init__(self) -> None:
        self.first: dict[str, PreparedInput] = {}
        self.identities = KnownIdentities()

    def decide(self, settings: Settings, chunk: list[PreparedInput]) -> dict[str, Instance]:
        """Settle `chunk`'s repeats and identity conflicts; return its indexed instances."""
        _settle_repeats_within_batch(chunk, self.first)
        with session_scope(settings.resolved_database_url) as session:
            known = known_instances(session, (i.ids.sop_uid for i in chunk if i.ids))
            self.identities.learn(
                KnownIdentities.from_index(session, (i.ids for i in chunk if i.ids))
            )
        _hold_identity_conflicts(chunk, self.identities)
        return known


def _settle_repeats_within_batch(
    items: list[PreparedInput], first: dict[str, PreparedInput] | None = None
) -> None:
    """A SOP UID seen twice in one batch: the first goes on; a repeat with the same HTJ2K bytes
    is a duplicate of it, one with other bytes a conflict (Orthanc keys instances by patient,
    study, series and SOP UID, so it would not catch every such pair by itself). `first` holds
    the first of each UID seen in earlier chunks of the batch, and learns this chunk's."""
    first = {} if first is None else first
    for item in items:
        if item.ids is None or item.result is None or item.outcome is not None:
            continue
        earlier = first.setdefault(item.ids.sop_uid, item)
        if earlier is item:
            continue
        assert earlier.result is not None
        if earlier.result.data == item.result.data:
            item.outcome = outcome_for(
                item, IngestStatus.DUPLICATE, reason="repeated in this batch"
            )
            item.outcome.verified = True
        else:
            item.outcome = _conflict(item)


def _hold_identity_conflicts(items: list[PreparedInput], identities: KnownIdentities) -> None:
    """A study under another patient, or a series under another study, than the index (or an
    earlier file of this batch) records is a conflict: quarantined, never stored."""
    for item in items:
        if item.ids is None or item.result is None or item.outcome is not None:
            continue
        reason = identities.mismatch(item.ids)
        if reason is not None:
            item.outcome = outcome_for(item, IngestStatus.CONFLICT, reason=reason)


def _sop(item: PreparedInput) -> str:
    return item.ids.sop_uid if item.ids else ""


_READ_BEFORE = IngestLimits(max_file_bytes=2**62, max_zip_ratio=2**62)


def _input_bytes(item: PreparedInput) -> bytes:
    """The input's bytes, read again where preparing did not keep them (it keeps few)."""
    if item.data is None:
        # Read within the limits once already (prepare_input); these are its bytes again.
        item.data = read_input(item.ref, _READ_BEFORE)
    return item.data


def _store(
    item: PreparedInput, client: OrthancClient, known: Instance | None, backup_dir: Path
) -> None:
    """Upload one prepared instance unless it is a known duplicate or a conflict."""
    if item.outcome is not None or item.result is None or item.ids is None:
        return
    try:
        if known is not None:
            _decide_known(item, client, known, backup_dir)
            return
        stored = client.store_instance(item.result.data)
        if stored.already_stored:
            _decide_already_in_orthanc(item, client, stored, backup_dir)
        else:
            _verify_read_back(item, client, stored)
    except TransientUpstreamError as err:
        # The input is untouched and a re-run is safe; the batch fails so Prefect retries it.
        item.upstream_error = err
    except (PermanentUpstreamError, VerificationError) as err:
        # Orthanc refused this instance, or its copy did not verify: keep it with the reason.
        item.outcome = outcome_for(item, IngestStatus.QUARANTINED, reason=str(err))
    except Exception as err:  # a bug or a surprising answer: keep the input, say so, go on
        log.exception("unexpected error storing %s", item.ref.name)
        item.outcome = outcome_for(
            item,
            IngestStatus.QUARANTINED,
            reason=f"unexpected error while storing ({type(err).__name__})",
        )


def _decide_known(
    item: PreparedInput, client: OrthancClient, known: Instance, backup_dir: Path
) -> None:
    """An indexed UID. Transcoding is deterministic, so the same input gives the same bytes:
    equal bytes → duplicate (stored again if Orthanc lost it); other bytes → compare content
    with Orthanc's copy; other bytes and no copy to compare with → conflict."""
    assert item.result is not None
    same_bytes = hashlib.sha256(item.result.data).hexdigest() == known.stored_sha256
    in_orthanc = client.instance_exists(known.orthanc_id)
    if same_bytes and in_orthanc:
        item.outcome = outcome_for(item, IngestStatus.DUPLICATE, ts=known.transfer_syntax)
        item.outcome.verified = True
    elif same_bytes:
        log.warning("indexed instance missing from Orthanc, storing it again")
        _verify_read_back(item, client, client.store_instance(item.result.data))
    elif in_orthanc:
        series_id, study_id = client.instance_parents(known.orthanc_id)
        located = StoredInstance(known.orthanc_id, "AlreadyStored", series_id, study_id)
        _decide_already_in_orthanc(item, client, located, backup_dir)
    else:
        item.outcome = _conflict(item)


def _decide_already_in_orthanc(
    item: PreparedInput, client: OrthancClient, stored: StoredInstance, backup_dir: Path
) -> None:
    """Orthanc has the UID but our index does not: compare content before calling it the same.

    Same content in another encoding (e.g. received by C-STORE) is upgraded to our verified
    HTJ2K copy on the spot; different content is a conflict.
    """
    assert item.result is not None
    existing = client.get_instance_file(stored.orthanc_id)
    if existing == item.result.data:
        item.outcome = outcome_for(item, IngestStatus.DUPLICATE)
        item.outcome.verified = True
        item.entry = _index_entry(item, stored, hashlib.sha256(existing).hexdigest())
        return
    existing_ts, existing_content = _describe(existing)
    ours = parse_dicom(_input_bytes(item))
    if existing_content != content_sha256(ours, item.result.pixel_sha256):
        item.outcome = _conflict(item)
        return
    if existing_ts in HTJ2K_LOSSLESS_SYNTAXES or item.result.action != TranscodeAction.TRANSCODED:
        # Equivalent content that needs no upgrade: keep Orthanc's copy, index what it holds.
        item.outcome = outcome_for(item, IngestStatus.DUPLICATE, ts=existing_ts)
        item.outcome.verified = True
        return
    stored, back_sha = replace_in_orthanc(
        client,
        stored.orthanc_id,
        original=existing,
        replacement=item.result.data,
        backup_dir=backup_dir,
    )
    item.outcome = outcome_for(
        item,
        IngestStatus.DUPLICATE,
        reason=f"already in Orthanc as {existing_ts}; replaced by verified HTJ2K",
    )
    item.outcome.verified = True
    item.entry = _index_entry(item, stored, back_sha)


def _describe(data: bytes) -> tuple[str | None, str | None]:
    """Transfer syntax and content hash of a stored file (None where it cannot be read).

    The hash goes through the same normalisation as ingest (`transcode_to_htj2k`), so lossy
    data is hashed by its bytes on both sides and equal content compares equal.
    """
    try:
        ds = parse_dicom(data)
        result = transcode_to_htj2k(ds, bytes_in=len(data))
    except IngestError:
        return None, None
    return str(ds.file_meta.get("TransferSyntaxUID", "")) or None, content_sha256(
        ds, result.pixel_sha256
    )


def _verify_read_back(item: PreparedInput, client: OrthancClient, stored: StoredInstance) -> None:
    """Read the stored file back; it must be the bytes we sent."""
    assert item.result is not None
    sent_sha = hashlib.sha256(item.result.data).hexdigest()
    back_sha = hashlib.sha256(client.get_instance_file(stored.orthanc_id)).hexdigest()
    if back_sha != sent_sha:
        raise VerificationError(
            f"read-back from Orthanc differs from what was sent (instance {stored.orthanc_id})"
        )
    item.outcome = outcome_for(item, IngestStatus.STORED)
    item.outcome.verified = True
    item.entry = _index_entry(item, stored, back_sha)


def _record(settings: Settings, session: Session, items: list[PreparedInput]) -> None:
    """One transaction: index what was stored, keep what was refused."""
    index_instances(session, (i.entry for i in items if i.entry is not None))
    for item in items:
        outcome = item.outcome
        if (
            outcome is None
            or outcome.status not in (IngestStatus.QUARANTINED, IngestStatus.CONFLICT)
            or not item.readable
        ):
            continue  # an unreadable input stays where it is; its outcome says why
        quarantine_bytes(
            session,
            settings.quarantine_dir,
            data=_input_bytes(item),
            source=item.ref.display,
            name=item.ref.name,
            reason=outcome.reason or outcome.status,
            kind=outcome.status,
            sop_instance_uid=outcome.sop_instance_uid,
        )


def _remove_originals(items: list[PreparedInput]) -> None:
    """Delete plain input files whose verified copy is in Orthanc (never zip members)."""
    for item in items:
        outcome = item.outcome
        if item.ref.member is None and outcome and outcome.verified:
            try:
                os.remove(item.ref.path)
            except OSError as err:
                log.warning("could not remove original %s: %s", Path(item.ref.path).name, err)


def _conflict(item: PreparedInput) -> FileOutcome:
    return outcome_for(
        item,
        IngestStatus.CONFLICT,
        reason="SOPInstanceUID already stored with different content; nothing overwritten",
    )


def _index_entry(item: PreparedInput, stored: StoredInstance, stored_sha: str) -> IndexEntry:
    assert item.ids is not None and item.result is not None
    return entry_for(
        item.ids,
        item.result,
        stored,
        stored_sha256=stored_sha,
        source="ingest",
    )
