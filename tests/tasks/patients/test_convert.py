"""OpenEMR JSON → FHIR Patient: the real shape (all strings, '' for missing) and edge cases."""

from __future__ import annotations

import pytest

from tasks.patients.convert import (
    EMR_UUID_SYSTEM,
    PatientConversionError,
    emr_to_fhir_patient,
    mrn_of,
)

MRN = "urn:neuronova:mrn"
RECORD = {
    "uuid": "9a1b2c3d-0000-4000-8000-000000000001", "pid": "1", "pubpid": "NN-000001",
    "title": "Dr.", "fname": "Søren", "mname": "Åke", "lname": "Kierkegård", "DOB": "1813-05-05",
    "sex": "Male", "street": "1 Nytorv", "postal_code": "1450", "city": "København", "state": "",
    "country_code": "DK", "phone_contact": "", "phone_home": "555-0100", "phone_cell": "",
    "email": "s@example.org", "status": "", "date": "2026-01-01 00:01:00",
}  # fmt: skip


def convert(**changes: str) -> dict:  # type: ignore[type-arg]
    return emr_to_fhir_patient({**RECORD, **changes}, mrn_system=MRN, source="https://emr.example")


def test_a_full_record_becomes_a_valid_patient() -> None:
    patient = convert()
    assert patient["resourceType"] == "Patient"
    assert mrn_of(patient, MRN) == "NN-000001"
    assert {"system": EMR_UUID_SYSTEM, "value": RECORD["uuid"], "use": "secondary"} in patient[
        "identifier"
    ]
    assert patient["name"] == [
        {"use": "official", "family": "Kierkegård", "given": ["Søren", "Åke"], "prefix": ["Dr."]}
    ]
    assert patient["gender"] == "male" and patient["birthDate"] == "1813-05-05"
    assert patient["meta"] == {"source": "https://emr.example"}
    assert {"system": "phone", "value": "555-0100", "use": "home"} in patient["telecom"]
    assert patient["address"] == [
        {"line": ["1 Nytorv"], "city": "København", "postalCode": "1450", "country": "DK"}
    ]


@pytest.mark.parametrize(
    ("sex", "gender"),
    [
        ("Female", "female"),
        ("male", "male"),
        ("Unknown", "unknown"),
        ("", "unknown"),
        ("X", "unknown"),
        ("Other", "other"),
    ],
)
def test_sex_maps_to_gender_with_unknown_as_the_default(sex: str, gender: str) -> None:
    assert convert(sex=sex)["gender"] == gender


@pytest.mark.parametrize("dob", ["", "0000-00-00", "05/05/1813", "1813-5-5"])
def test_a_missing_or_malformed_birth_date_is_left_out(dob: str) -> None:
    assert "birthDate" not in convert(DOB=dob)


def test_empty_strings_never_become_empty_elements() -> None:
    patient = convert(
        title="",
        mname="",
        street="",
        city="",
        postal_code="",
        country_code="",
        phone_home="",
        email="",
        fname="",
        lname="Ng",
    )
    assert patient["name"] == [{"use": "official", "family": "Ng"}]
    assert "address" not in patient and "telecom" not in patient


def test_unicode_names_survive() -> None:
    patient = convert(fname="李", lname="小龍", mname="")
    assert patient["name"][0]["given"] == ["李"] and patient["name"][0]["family"] == "小龍"


def test_a_record_without_mrn_is_refused() -> None:
    with pytest.raises(PatientConversionError, match="no MRN"):
        convert(pubpid="  ")
