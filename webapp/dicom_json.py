"""DICOM JSON answers (QIDO, metadata) narrowed to what the archive index places in a study.

Orthanc keys a study by PatientID and StudyInstanceUID, and its DICOMweb answers go by
StudyInstanceUID alone: a file that names patient X's study with patient Y's PatientID, or
instances that arrived by C-STORE and are not verified and indexed yet, would appear in X's
series lists and metadata. The gate therefore reads these small answers itself and keeps a
dataset only when its patient is the study's patient in the index and its series and instance
(where it names them) are indexed in that study. Pixel data never comes this way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_PATIENT_ID = "00100020"
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_ABSENT = object()  # the dataset does not carry the element (not the same as an empty value)


@dataclass(frozen=True)
class StudyMembers:
    """What the index records for one study: its patient, its series and its instances."""

    study_uid: str
    patient_id: str
    series: frozenset[str]
    instances: frozenset[str]


def keep_study_members(datasets: Iterable[Any], members: StudyMembers) -> list[dict[str, Any]]:
    """The datasets that belong to the study as the index records it, in their order."""
    return [ds for ds in datasets if isinstance(ds, dict) and _belongs(ds, members)]


def _belongs(ds: dict[str, Any], members: StudyMembers) -> bool:
    checks = (
        (_STUDY_UID, {members.study_uid}),
        (_SERIES_UID, members.series),
        (_SOP_UID, members.instances),
    )
    for tag, allowed in checks:
        value = _first_value(ds, tag)
        if value is not _ABSENT and value not in allowed:
            return False
    patient = _first_value(ds, _PATIENT_ID)
    # An empty PatientID is still a patient's (DICOM allows it); it must match as well.
    return patient is _ABSENT or (patient or "") == members.patient_id


def _first_value(ds: dict[str, Any], tag: str) -> object:
    """The element's first value; `_ABSENT` when the dataset does not carry the element."""
    element = ds.get(tag)
    if not isinstance(element, dict):
        return _ABSENT
    values = element.get("Value")
    if not values:
        return None
    return values[0]
