"""Preparing one input for ingest: read, parse, validate, transcode, verify (no network).

Pure CPU work on one input, run on the batch's threads: it imports no database, HTTP client
or Prefect. It keeps the input's bytes only for an input that is quarantined; a later step
that needs them again reads them again, so a batch holds HTJ2K files, not originals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypedDict, cast

from common.errors import IngestError, UpstreamError, VerificationError
from tasks.dicom.parse import InstanceIds, parse_dicom, validate_identifiers
from tasks.dicom.transcode import TranscodeResult, transcode_to_htj2k
from tasks.ingest.decode_guard import CRASHED, DecodeGuard
from tasks.ingest.inputs import InputRef, Oversized, read_input
from tasks.ingest.limits import IngestLimits, check_pixel_budget

if TYPE_CHECKING:
    from tasks.archive.index import IndexEntry

log = logging.getLogger(__name__)


class IngestStatus(StrEnum):
    """What became of one input; `neuronova ingest --json` prints the value."""

    STORED = "stored"  # verified and stored in Orthanc, indexed
    DUPLICATE = "duplicate"  # the same instance was already stored: nothing to do
    QUARANTINED = "quarantined"  # kept under quarantine/ with the reason
    CONFLICT = "conflict"  # the same SOPInstanceUID with other content: nothing overwritten


class FileReport(TypedDict):
    """One input in `neuronova ingest --json`."""

    path: str
    status: IngestStatus
    sop_instance_uid: str | None
    transfer_syntax: str | None
    reason: str | None


@dataclass
class FileOutcome:
    """What happened to one input; the first five fields are the public report."""

    path: str
    status: IngestStatus
    sop_instance_uid: str | None = None
    transfer_syntax: str | None = None
    reason: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    bytes_in: int = 0
    bytes_stored: int = 0
    verified: bool = False

    def public(self) -> FileReport:
        """The `neuronova ingest --json` shape of this outcome."""
        return cast(FileReport, {name: getattr(self, name) for name in FileReport.__annotations__})


@dataclass
class PreparedInput:
    """One input on its way through the batch."""

    ref: InputRef
    readable: bool = True
    bytes_in: int = 0
    data: bytes | None = None  # the input's bytes, kept only while a decision may need them
    outcome: FileOutcome | None = None  # set once the input's fate is decided
    ids: InstanceIds | None = None
    result: TranscodeResult | None = None
    entry: IndexEntry | None = None  # what to index, when stored or found duplicate
    upstream_error: UpstreamError | None = None


def prepare_input(
    ref: InputRef, limits: IngestLimits | None = None, guard: DecodeGuard | None = None
) -> PreparedInput:
    """Read, parse, validate and transcode one input (CPU work, no network; runs in a worker),
    within `limits` (an input over one is quarantined with the limit named).

    Only what the batch needs travels back: the HTJ2K file, or the input's bytes when the
    input is quarantined.
    """
    limits = limits or IngestLimits()
    item = PreparedInput(ref)
    try:
        data = read_input(ref, limits)
    except Oversized as err:  # quarantined: its first bytes, the reason with the full hash
        item.data = err.head
        item.outcome = outcome_for(item, IngestStatus.QUARANTINED, reason=str(err))
        return item
    except (OSError, IngestError) as err:
        item.readable = False
        item.outcome = outcome_for(
            item, IngestStatus.QUARANTINED, reason=f"cannot read input: {err}"
        )
        return item
    item.bytes_in = len(data)
    try:
        ds = parse_dicom(data)
        item.ids = validate_identifiers(ds)
        check_pixel_budget(ds, limits)
        if guard is not None and guard.crashed_before(ref):
            item.data = data
            item.outcome = outcome_for(item, IngestStatus.QUARANTINED, reason=CRASHED)
            guard.forget(ref)
            return item
        with guard.decoding(ref) if guard is not None else nullcontext():
            item.result = transcode_to_htj2k(ds, bytes_in=len(data), source=data)
    except (IngestError, VerificationError) as err:
        item.data = data
        item.outcome = outcome_for(item, IngestStatus.QUARANTINED, reason=str(err))
    except Exception as err:  # a bug or a pydicom surprise: keep the file, say so, go on
        log.exception("unexpected error preparing %s", ref.name)
        item.data = data
        item.outcome = outcome_for(
            item,
            IngestStatus.QUARANTINED,
            reason=f"unexpected error while reading ({type(err).__name__})",
        )
    return item


def prepare_inputs(
    refs: Sequence[InputRef], limits: IngestLimits | None = None, guard: DecodeGuard | None = None
) -> list[PreparedInput]:
    """`prepare_input` of each of `refs`, in order (one call to a worker process for many)."""
    return [prepare_input(ref, limits, guard) for ref in refs]


def outcome_for(
    item: PreparedInput, status: IngestStatus, *, reason: str | None = None, ts: str | None = None
) -> FileOutcome:
    ids, result = item.ids, item.result
    return FileOutcome(
        path=item.ref.display,
        status=status,
        sop_instance_uid=ids.sop_uid if ids else None,
        transfer_syntax=ts or (result.transfer_syntax if result else None),
        reason=reason or (result.reason if result else None),
        study_uid=ids.study_uid if ids else None,
        series_uid=ids.series_uid if ids else None,
        modality=ids.modality if ids else None,
        bytes_in=item.bytes_in,
        bytes_stored=result.bytes_out
        if result and status in (IngestStatus.STORED, IngestStatus.DUPLICATE)
        else 0,
    )
