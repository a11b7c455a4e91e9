"""The archive index in the database: which studies, series and verified instances we hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Executable
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, SQLModel, col, select

from common.db import Instance, Series, Study, session_scope, utcnow
from tasks.archive.orthanc import StoredInstance
from tasks.dicom.parse import InstanceIds
from tasks.dicom.transcode import TranscodeResult


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
    pixel_sha256: str | None
    stored_sha256: str
    bytes_in: int
    bytes_stored: int
    source: str = "ingest"
    study_description: str | None = None


def entry_for(
    ids: InstanceIds,
    result: TranscodeResult,
    stored: StoredInstance,
    *,
    stored_sha256: str,
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
        study_description=ids.study_description,
        orthanc_id=stored.orthanc_id,
        orthanc_series_id=stored.series_id,
        orthanc_study_id=stored.study_id,
        transfer_syntax=result.transfer_syntax,
        source_transfer_syntax=result.source_transfer_syntax,
        action=result.action,
        reason=result.reason,
        lossless=result.lossless,
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
    """Upsert studies, series and instances, idempotent by UID and safe under concurrency.

    Batches of one study run in parallel, so rows are written with the database's own upsert
    (never read-then-insert), and a study's derived fields are updated under a row lock.
    """
    batch = sorted(entries, key=lambda e: e.sop_uid)
    if not batch:
        return
    first_of_study = {e.study_uid: e for e in reversed(batch)}
    upsert(
        session,
        Study,
        [
            Study(study_instance_uid=uid, patient_id=e.patient_id)
            for uid, e in sorted(first_of_study.items())
        ],
        update=False,
    )
    for study_uid in sorted(first_of_study):
        _update_study(session, study_uid, [e for e in batch if e.study_uid == study_uid])
    series = {e.series_uid: _series_row(e) for e in batch}
    upsert(session, Series, [series[uid] for uid in sorted(series)])
    upsert(session, Instance, [_instance_row(e) for e in batch])


def _update_study(session: Session, study_uid: str, entries: list[IndexEntry]) -> None:
    study = session.get(Study, study_uid, with_for_update=True, populate_existing=True)
    assert study is not None
    for entry in entries:
        study.study_date = entry.study_date or study.study_date
        study.accession_number = entry.accession_number or study.accession_number
        study.study_description = entry.study_description or study.study_description
        study.orthanc_id = entry.orthanc_study_id
        study.modalities = _merge_modalities(study.modalities, entry.modality)
    study.updated_at = utcnow()
    session.add(study)
    session.flush()


def upsert(
    session: Session, model: type[SQLModel], rows: list[SQLModel], *, update: bool = True
) -> None:
    """INSERT … ON CONFLICT on SQLite, INSERT … ON DUPLICATE KEY on MySQL/MariaDB.

    With `update=False` an existing row is left untouched (insert if missing).
    """
    if not rows:
        return
    table = model.__table__  # type: ignore[attr-defined]
    keys = [c.name for c in table.primary_key.columns]
    values = [row.model_dump() for row in rows]
    dialect = session.get_bind().dialect.name
    statement: Executable
    if dialect == "sqlite":
        stmt = sqlite_insert(table).values(values)
        changes = {c: stmt.excluded[c] for c in values[0] if c not in keys}
        statement = (
            stmt.on_conflict_do_update(index_elements=keys, set_=changes)
            if update
            else stmt.on_conflict_do_nothing(index_elements=keys)
        )
    elif dialect in ("mysql", "mariadb"):
        mstmt = mysql_insert(table).values(values)
        columns = [c for c in values[0] if c not in keys] if update else keys
        statement = mstmt.on_duplicate_key_update({c: mstmt.inserted[c] for c in columns})
    else:
        raise NotImplementedError(f"no upsert for the {dialect} dialect")
    session.execute(statement)


def _series_row(entry: IndexEntry) -> Series:
    return Series(
        series_instance_uid=entry.series_uid,
        study_instance_uid=entry.study_uid,
        modality=entry.modality,
        series_number=entry.series_number,
        orthanc_id=entry.orthanc_series_id,
    )


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


def patients_of_studies(url: str, study_uids: Iterable[str]) -> list[str]:
    """The MRNs (PatientID) of these studies, as the index holds them."""
    uids = list(study_uids)
    if not uids:
        return []
    query = select(Study.patient_id).where(col(Study.study_instance_uid).in_(uids))
    with session_scope(url) as session:
        return sorted(set(session.exec(query)))
