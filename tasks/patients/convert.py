"""OpenEMR patient JSON → FHIR R4 Patient, validated with `fhir.resources`.

OpenEMR's Standard API gives every field as a string, '' when missing. The FHIR Patient keeps
two identifiers, the hospital MRN (OpenEMR's `pubpid`, our business key) and the EMR's uuid, and
says where it came from in `meta.source`. Empty strings never become empty FHIR elements (FHIR
forbids them); an unknown or unusable sex becomes `gender: unknown`; a missing or malformed
date of birth is left out rather than guessed.
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from common.errors import NeuroNovaError

EMR_UUID_SYSTEM = "urn:neuronova:openemr:uuid"
_GENDERS = {"male": "male", "m": "male", "female": "female", "f": "female", "other": "other"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class PatientConversionError(NeuroNovaError):
    """An EMR record that cannot become a valid FHIR Patient (the message says why)."""


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return value.strip() if isinstance(value, str) else ""


def emr_to_fhir_patient(record: dict[str, Any], *, mrn_system: str, source: str) -> dict[str, Any]:
    """A validated FHIR Patient (as JSON) for one OpenEMR patient record."""
    mrn, emr_uuid = _text(record, "pubpid"), _text(record, "uuid")
    if not mrn:
        raise PatientConversionError(f"EMR patient {emr_uuid or '?'} has no MRN (pubpid)")
    mrn_type = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
    }
    identifiers = [{"use": "usual", "system": mrn_system, "value": mrn, "type": mrn_type}]
    if emr_uuid:
        identifiers.append({"use": "secondary", "system": EMR_UUID_SYSTEM, "value": emr_uuid})
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "meta": {"source": source},
        "identifier": identifiers,
        "gender": _GENDERS.get(_text(record, "sex").lower(), "unknown"),
    }
    name = _name(record)
    if name:
        resource["name"] = [name]
    birth = _text(record, "DOB")
    if _DATE.match(birth) and birth != "0000-00-00":
        resource["birthDate"] = birth
    telecom = _telecom(record)
    if telecom:
        resource["telecom"] = telecom
    address = _address(record)
    if address:
        resource["address"] = [address]
    try:
        return Patient.model_validate(resource).model_dump(mode="json", exclude_none=True)
    except ValidationError as err:
        raise PatientConversionError(
            f"EMR patient {emr_uuid or mrn} is not a valid FHIR Patient: {err.error_count()} "
            f"problem(s), first: {err.errors()[0]['msg']}"
        ) from err


def mrn_of(patient: dict[str, Any], mrn_system: str) -> str | None:
    """The MRN a FHIR Patient carries under the hospital's system."""
    for identifier in patient.get("identifier", []):
        if identifier.get("system") == mrn_system and identifier.get("value"):
            return str(identifier["value"])
    return None


def display_name(patient: dict[str, Any]) -> str:
    """A FHIR Patient's name as people write it ("Given Family", or its `text`), "" when it has
    none; what the worklist shows and searches (`patients.display_name`)."""
    names = patient.get("name")
    if not isinstance(names, list) or not names or not isinstance(names[0], dict):
        return ""
    first = names[0]
    if isinstance(first.get("text"), str) and first["text"].strip():
        return str(first["text"]).strip()
    given = [g for g in first.get("given", []) if isinstance(g, str)]
    family = first.get("family")
    return " ".join([*given, family if isinstance(family, str) else ""]).strip()


def _name(record: dict[str, Any]) -> dict[str, Any]:
    given = [g for g in (_text(record, "fname"), _text(record, "mname")) if g]
    family = _text(record, "lname")
    name: dict[str, Any] = {"use": "official"}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if _text(record, "title"):
        name["prefix"] = [_text(record, "title")]
    return name if len(name) > 1 else {}


def _telecom(record: dict[str, Any]) -> list[dict[str, str]]:
    points = []
    for key, use in (("phone_home", "home"), ("phone_cell", "mobile"), ("phone_contact", "temp")):
        if _text(record, key):
            points.append({"system": "phone", "value": _text(record, key), "use": use})
    if _text(record, "email"):
        points.append({"system": "email", "value": _text(record, "email")})
    return points


def _address(record: dict[str, Any]) -> dict[str, Any]:
    address: dict[str, Any] = {}
    if _text(record, "street"):
        address["line"] = [_text(record, "street")]
    for key, fhir_key in (
        ("city", "city"),
        ("state", "state"),
        ("postal_code", "postalCode"),
        ("country_code", "country"),
    ):
        if _text(record, key):
            address[fhir_key] = _text(record, key)
    return address
