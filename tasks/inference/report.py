"""The AI result in FHIR: Observations (lesion count, total volume in mL) and a DiagnosticReport.

Built as validated R4 JSON (`fhir.resources`), each with a business identifier made of the
study, the series read, the model and its version, so a conditional create (`If-None-Exist` on
it) makes them once however often inference runs, and a later series gets reports of its own.
The report names the StudyInstanceUID the DICOM way
(`urn:dicom:uid` / `urn:oid:<uid>`) and says it is AI generated and not for clinical use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from tasks.patients.fhir import FhirClient

RESULT_SYSTEM = "urn:neuronova:ai-result"
CODE_SYSTEM = "urn:neuronova:ai"
DICOM_UID_SYSTEM = "urn:dicom:uid"
NOT_FOR_CLINICAL_USE = "AI generated, not for clinical use"
_IMAGING = {
    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
    "code": "RAD",
    "display": "Radiology",
}
_OBSERVATION_CATEGORY = {
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "imaging",
    "display": "Imaging",
}
UCUM = "http://unitsofmeasure.org"


def result_key(study_uid: str, series_uid: str, model: str, version: str, kind: str) -> str:
    """The business key of one result: idempotent per (study, series, model version, kind).

    No `|`, `,` or `$` in it: FHIR token searches (and so `If-None-Exist`) split on those.
    """
    slug = re.sub(r"[^a-z0-9.]+", "-", model.lower()).strip("-")
    return f"{study_uid}:{series_uid}:{slug}:{version}:{kind}"


def _observation(
    common: dict[str, Any], key: str, code: str, display: str, value: dict[str, Any]
) -> dict[str, Any]:
    resource = {
        **common,
        "identifier": [{"system": RESULT_SYSTEM, "value": key}],
        "code": {
            "coding": [{"system": CODE_SYSTEM, "code": code, "display": display}],
            "text": display,
        },
        **value,
    }
    return Observation.model_validate(resource).model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class LesionFindings:
    """One AI reading of a study, as FHIR reports it."""

    patient_ref: str  # Patient/<id>
    study_uid: str
    series_uid: str  # the series the model read
    model: str
    version: str
    lesion_count: int
    volume_ml: float


def lesion_observations(findings: LesionFindings) -> list[dict[str, Any]]:
    """The two measurements, as Observations for the patient."""
    patient_ref, study_uid, series_uid = (
        findings.patient_ref,
        findings.study_uid,
        findings.series_uid,
    )
    model, version = findings.model, findings.version
    common: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [{"coding": [_OBSERVATION_CATEGORY]}],
        "subject": {"reference": patient_ref},
        "issued": datetime.now(UTC).isoformat(),
        "note": [
            {
                "text": f"{NOT_FOR_CLINICAL_USE}. Model {model} {version}; "
                f"study {study_uid}, series {series_uid}."
            }
        ],
        "device": {"display": f"{model} {version}"},
    }
    quantity = {
        "value": round(float(findings.volume_ml), 3),
        "unit": "mL",
        "system": UCUM,
        "code": "mL",
    }
    return [
        _observation(
            common,
            result_key(study_uid, series_uid, model, version, "lesion-count"),
            "lesion-count",
            "Brain lesion count (AI)",
            {"valueInteger": int(findings.lesion_count)},
        ),
        _observation(
            common,
            result_key(study_uid, series_uid, model, version, "lesion-volume"),
            "lesion-volume",
            "Total brain lesion volume (AI)",
            {"valueQuantity": quantity},
        ),
    ]


def lesion_report(findings: LesionFindings, observation_refs: list[str]) -> dict[str, Any]:
    """The DiagnosticReport that groups the Observations and names the study."""
    study_uid, series_uid = findings.study_uid, findings.series_uid
    model, version = findings.model, findings.version
    key = result_key(study_uid, series_uid, model, version, "report")
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [
            {"system": RESULT_SYSTEM, "value": key},
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
        ],
        "status": "preliminary",
        "category": [{"coding": [_IMAGING]}],
        "code": {"text": "AI brain lesion segmentation"},
        "subject": {"reference": findings.patient_ref},
        "issued": datetime.now(UTC).isoformat(),
        "result": [{"reference": ref} for ref in observation_refs],
        "conclusion": (
            f"{findings.lesion_count} lesion(s), {findings.volume_ml:.1f} mL in total, "
            f"in study {study_uid} (series {series_uid}). "
            f"{NOT_FOR_CLINICAL_USE} ({model} {version})."
        ),
    }
    return DiagnosticReport.model_validate(report).model_dump(mode="json", exclude_none=True)


def publish_lesion_results(fhir: FhirClient, findings: LesionFindings) -> tuple[str, list[str]]:
    """Create the Observations, then the report that points at them, each only once.

    Returns (report id, observation ids). A run repeated after a lost answer finds what the
    first made: every create is conditional on the resource's business identifier.
    """
    observation_ids = []
    for observation in lesion_observations(findings):
        key = observation["identifier"][0]["value"]
        stored, _created = fhir.conditional_create(observation, system=RESULT_SYSTEM, value=key)
        observation_ids.append(str(stored["id"]))
    report = lesion_report(findings, [f"Observation/{i}" for i in observation_ids])
    key = report["identifier"][0]["value"]
    stored, _created = fhir.conditional_create(report, system=RESULT_SYSTEM, value=key)
    return str(stored["id"]), observation_ids
