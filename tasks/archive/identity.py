"""Patient, study and series identity: one patient per study, one study per series.

Orthanc keys a study by PatientID *and* StudyInstanceUID, so a file that names patient X's
study with patient Y's PatientID is stored beside X's study as a study of its own, and every
answer by StudyInstanceUID (QIDO, metadata, the AI's reading) then mixes the two patients.
In a PACS that is a patient mismatch, one of the worst errors it can make. So the first
identity the archive index records for a study (its patient) and for a series (its study)
stands: a later instance that contradicts it is a `conflict`, kept in quarantine with the
reason, never stored beside the first, and listed for an admin (`neuronova conflicts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlmodel import Session, select

from common.db import Series, Study
from tasks.dicom.parse import InstanceIds


@dataclass
class KnownIdentities:
    """Which patient each study belongs to and which study each series, as first recorded."""

    study_patient: dict[str, str] = field(default_factory=dict)
    series_study: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_index(cls, session: Session, ids: Iterable[InstanceIds]) -> KnownIdentities:
        """What the index already records for the studies and series of `ids`."""
        ids = list(ids)
        studies = {i.study_uid for i in ids}
        series = {i.series_uid for i in ids}
        known = cls()
        if studies:
            rows = session.exec(
                select(Study.study_instance_uid, Study.patient_id).where(
                    Study.study_instance_uid.in_(studies)  # type: ignore[attr-defined]
                )
            )
            known.study_patient.update((study, patient) for study, patient in rows)
        if series:
            rows = session.exec(
                select(Series.series_instance_uid, Series.study_instance_uid).where(
                    Series.series_instance_uid.in_(series)  # type: ignore[attr-defined]
                )
            )
            known.series_study.update((s, study) for s, study in rows)
        return known

    def learn(self, other: KnownIdentities) -> None:
        """Add what `other` knows (a later look-up) where nothing is known yet: what was
        recorded or seen first stands."""
        for study, patient in other.study_patient.items():
            self.study_patient.setdefault(study, patient)
        for series, study in other.series_study.items():
            self.series_study.setdefault(series, study)

    def mismatch(self, ids: InstanceIds) -> str | None:
        """Why this instance contradicts what is known (None when it does not); what it names
        is then known too, so the first of several new instances sets the rule for the rest."""
        patient = self.study_patient.setdefault(ids.study_uid, ids.patient_id)
        if patient != ids.patient_id:
            return (
                f"patient mismatch: StudyInstanceUID {ids.study_uid} belongs to another "
                "PatientID in the archive; nothing stored, reconcile with `neuronova conflicts`"
            )
        study = self.series_study.setdefault(ids.series_uid, ids.study_uid)
        if study != ids.study_uid:
            return (
                f"series mismatch: SeriesInstanceUID {ids.series_uid} belongs to study {study}; "
                "nothing stored, reconcile with `neuronova conflicts`"
            )
        return None
