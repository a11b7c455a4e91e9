"""The archive index in the database: which studies, series and verified instances we hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from common.db import Instance, Series, Study, utcnow
from tasks.dicom import InstanceIds
from tasks.orthanc import StoredInstance
from tasks.transcode import TranscodeResult


@dataclass(frozen=True)
class IndexEntry:
    """Everything the index records about one verified instance."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str | None
    series_number: int | None
    study_date: str | None
    accession_number: str | None
    orthanc_id: str
    orthanc_series_id: str
    orthanc_study_id: str
    transfer_syntax: str
    source_transfer_syntax: str
    action: str
    reason: str | None
    lossless: bool
    content_sha256: str
    pixel_sha256: str | None
    stored_sha256: str
    bytes_in: int
    bytes_stored: int
    source: str = "ingest"


def entry_for(
    ids: InstanceIds,
    result: TranscodeResult,
    stored: StoredInstance,
    *,
    stored_sha256: str,
    content_sha256: str,
    source: str,
) -> IndexEntry:
    """The index entry of an instance verified in Orthanc."""
    return IndexEntry(
        patient_id=ids.patient_id,
        study_uid=ids.study_uid,
        series_uid=ids.series_uid,
        sop_uid=ids.sop_uid,
        sop_class_uid=ids.sop_class_uid,
        modality=ids.modality,
        series_number=ids.series_number,
        study_date=ids.study_date,
        accession_number=ids.accession_number,
        orthanc_id=stored.orthanc_id,
        orthanc_series_id=stored.series_id,
        orthanc_study_id=stored.study_id,
        transfer_syntax=result.transfer_syntax,
        source_transfer_syntax=result.source_transfer_syntax,
        action=result.action,
        reason=result.reason,
        lossless=result.lossless,
        content_sha256=content_sha256,
        pixel_sha256=result.pixel_sha256,
        stored_sha256=stored_sha256,
        bytes_in=result.bytes_in,
        bytes_stored=result.bytes_out,
        source=source,
    )


def known_instances(session: Session, sop_uids: Iterable[str]) -> dict[str, Instance]:
    """Indexed instances among `sop_uids`, in one query."""
    uids = list(set(sop_uids))
    if not uids:
        return {}
    rows = session.exec(select(Instance).where(col(Instance.sop_instance_uid).in_(uids)))
    return {row.sop_instance_uid: row for row in rows}


def index_instances(session: Session, entries: Iterable[IndexEntry]) -> None:
    """Upsert studies, series and instances (idempotent by their UIDs)."""
    studies: dict[str, Study] = {}
    for entry in entries:
        study = studies.get(entry.study_uid) or session.get(Study, entry.study_uid)
        if study is None:
            study = Study(study_instance_uid=entry.study_uid, patient_id=entry.patient_id)
        study.study_date = entry.study_date or study.study_date
        study.accession_number = entry.accession_number or study.accession_number
        study.orthanc_id = entry.orthanc_study_id
        study.modalities = _merge_modalities(study.modalities, entry.modality)
        study.updated_at = utcnow()
        session.add(study)
        studies[entry.study_uid] = study
        session.merge(
            Series(
                series_instance_uid=entry.series_uid,
                study_instance_uid=entry.study_uid,
                modality=entry.modality,
                series_number=entry.series_number,
                orthanc_id=entry.orthanc_series_id,
            )
        )
        session.merge(_instance_row(entry))


def _instance_row(entry: IndexEntry) -> Instance:
    return Instance(
        sop_instance_uid=entry.sop_uid,
        series_instance_uid=entry.series_uid,
        study_instance_uid=entry.study_uid,
        sop_class_uid=entry.sop_class_uid,
        orthanc_id=entry.orthanc_id,
        transfer_syntax=entry.transfer_syntax,
        source_transfer_syntax=entry.source_transfer_syntax,
        action=entry.action,
        reason=entry.reason,
        lossless=entry.lossless,
        content_sha256=entry.content_sha256,
        pixel_sha256=entry.pixel_sha256,
        stored_sha256=entry.stored_sha256,
        bytes_in=entry.bytes_in,
        bytes_stored=entry.bytes_stored,
        source=entry.source,
        verified_at=utcnow(),
    )


def _merge_modalities(current: str, modality: str | None) -> str:
    """Keep `ModalitiesInStudy` as a sorted, backslash-separated set."""
    values = {m for m in current.split("\\") if m}
    if modality:
        values.add(modality)
    return "\\".join(sorted(values))[:64]
