"""Searches and metadata narrowed to what the index places in a study."""

from __future__ import annotations

from typing import Any

from webapp.dicom_json import StudyMembers, keep_study_members

MEMBERS = StudyMembers(
    study_uid="1.2.3",
    patient_id="NN-1",
    series=frozenset({"1.2.3.1"}),
    instances=frozenset({"1.2.3.1.1", "1.2.3.1.2"}),
)


def _ds(**tags: str | None) -> dict[str, Any]:
    codes = {"patient": "00100020", "study": "0020000D", "series": "0020000E", "sop": "00080018"}
    return {
        codes[name]: ({"vr": "LO"} if value is None else {"vr": "LO", "Value": [value]})
        for name, value in tags.items()
    }


def test_indexed_datasets_of_the_study_and_its_patient_are_kept_in_order() -> None:
    datasets = [
        _ds(patient="NN-1", study="1.2.3", series="1.2.3.1", sop="1.2.3.1.2"),
        _ds(study="1.2.3", series="1.2.3.1"),  # a series answer names no patient or instance
        _ds(patient="NN-1", study="1.2.3"),  # a study answer
        _ds(patient="NN-1", study="1.2.3", series="1.2.3.1", sop="1.2.3.1.1"),
    ]
    assert keep_study_members(datasets, MEMBERS) == datasets


def test_another_patient_an_unindexed_series_or_instance_is_dropped() -> None:
    dropped = [
        _ds(patient="SOMEONE-ELSE", study="1.2.3"),
        _ds(patient=None, study="1.2.3"),  # an empty PatientID is not NN-1
        _ds(patient="NN-1", study="1.2.3", series="1.2.3.9"),
        _ds(patient="NN-1", study="1.2.3", series="1.2.3.1", sop="1.2.3.1.9"),
        _ds(patient="NN-1", study="9.9.9"),
        _ds(series=None),
        "not a dataset",
    ]
    assert keep_study_members(dropped, MEMBERS) == []
