"""The AI result in FHIR: an Observation per lesion (its volume, its Tracking UID), the lesion
count and total volume, a DiagnosticReport that groups them, the model version as a Device.

Built as validated R4 JSON (`fhir.resources`), each with a business identifier made of the
study, the series read, the model and its version, so a conditional create (`If-None-Exist` on
it) makes them once however often inference runs, and a later series gets reports of its own.
The report names the StudyInstanceUID, the TID 1500 SR and the SEG the DICOM way
(`urn:dicom:uid` / `urn:oid:<uid>`) and says it is AI generated and not for clinical use.

Every Observation names the Device (`Observation.device`); an R4 DiagnosticReport has no place
for one, so a Provenance says the Device wrote the report and its Observations (the way the
HL7 AI Transparency guide records an AI author). The Provenance's id is derived from the
report's key and written by update-as-create (PUT), so it too exists once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

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
SNOMED = "http://snomed.info/sct"
MODEL_VERSION_SYSTEM = "urn:neuronova:model-version"  # a Device's identifier: model:version
_VOLUME = {"system": SNOMED, "code": "118565006", "display": "Volume"}
_BRAIN = {"system": SNOMED, "code": "12738006", "display": "Brain structure"}
_PROVENANCE_AUTHOR = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "author",
    "display": "Author",
}
_CREATE = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
    "code": "CREATE",
    "display": "create",
}


def result_key(study_uid: str, series_uid: str, model: str, version: str, kind: str) -> str:
    """The business key of one result: idempotent per (study, series, model version, kind).

    No `|`, `,` or `$` in it: FHIR token searches (and so `If-None-Exist`) split on those.
    """
    return f"{study_uid}:{series_uid}:{model_slug(model)}:{version}:{kind}"


def _observation(
    common: dict[str, Any],
    key: str,
    code: str,
    display: str,
    value: dict[str, Any],
    *,
    tracking_uid: str | None = None,
) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [{"system": RESULT_SYSTEM, "value": key}]
    if tracking_uid:
        identifiers.append(
            {
                "system": DICOM_UID_SYSTEM,
                "value": f"urn:oid:{tracking_uid}",
                "type": {"text": "Tracking Unique Identifier"},
            }
        )
    resource = {
        **common,
        "identifier": identifiers,
        "code": {
            "coding": [{"system": CODE_SYSTEM, "code": code, "display": display}],
            "text": display,
        },
        **value,
    }
    return Observation.model_validate(resource).model_dump(mode="json", exclude_none=True)


def model_slug(model: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", model.lower()).strip("-")


def device_resource(model: str, version: str, bundle_sha256: str) -> dict[str, Any]:
    """The model version as a Device: what wrote every AI Observation and report."""
    device: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [{"system": MODEL_VERSION_SYSTEM, "value": f"{model_slug(model)}:{version}"}],
        "status": "active",
        "manufacturer": "NeuroNova",
        "deviceName": [{"name": model, "type": "model-name"}],
        "type": {"text": "AI brain lesion segmentation model"},
        "version": [{"value": version}],
        "note": [{"text": NOT_FOR_CLINICAL_USE}],
    }
    if bundle_sha256:
        device["property"] = [
            {"type": {"text": "bundle sha256"}, "valueCode": [{"text": bundle_sha256}]}
        ]
    return Device.model_validate(device).model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class LesionFinding:
    """One lesion as FHIR reports it (an Observation of its own)."""

    number: int
    tracking_uid: str
    label: str  # "Lesion 1"
    volume_ml: float


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
    lesions: tuple[LesionFinding, ...] = field(default=())
    device_ref: str | None = None  # Device/<id>
    seg_sop_uid: str | None = None
    sr_sop_uid: str | None = None


def _ml(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 3), "unit": "mL", "system": UCUM, "code": "mL"}


def lesion_observations(findings: LesionFindings) -> list[dict[str, Any]]:
    """The count and the total volume, then one Observation per lesion (its volume, its
    Tracking UID, the brain as its site, derived from the study), for the patient."""
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
        "device": {"reference": findings.device_ref, "display": f"{model} {version}"}
        if findings.device_ref
        else {"display": f"{model} {version}"},
    }
    per_lesion = [
        _observation(
            common,
            result_key(study_uid, series_uid, model, version, f"lesion-{lesion.number}"),
            "lesion-volume-each",
            f"{lesion.label} volume (AI)",
            {
                "code": {
                    "coding": [
                        {"system": CODE_SYSTEM, "code": "lesion-volume-each"},
                        _VOLUME,
                    ],
                    "text": f"{lesion.label} volume (AI)",
                },
                "bodySite": {"coding": [_BRAIN]},
                "derivedFrom": [_imaging_study(study_uid)],
                "valueQuantity": _ml(lesion.volume_ml),
            },
            tracking_uid=lesion.tracking_uid,
        )
        for lesion in findings.lesions
    ]
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
            {"valueQuantity": _ml(findings.volume_ml)},
        ),
        *per_lesion,
    ]


def _imaging_study(study_uid: str) -> dict[str, Any]:
    """A logical reference to the study (no ImagingStudy resource is kept: the PACS is the
    source), by its StudyInstanceUID."""
    return {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
    }


def tracking_uid_of(observation: dict[str, Any]) -> str | None:
    """A lesion Observation's Tracking UID (None for the count and the total)."""
    for identifier in observation.get("identifier", []):
        if identifier.get("system") == DICOM_UID_SYSTEM:
            return str(identifier["value"]).removeprefix("urn:oid:")
    return None


def lesion_report(findings: LesionFindings, observation_refs: list[str]) -> dict[str, Any]:
    """The DiagnosticReport that groups the Observations and names the study."""
    study_uid, series_uid = findings.study_uid, findings.series_uid
    model, version = findings.model, findings.version
    key = result_key(study_uid, series_uid, model, version, "report")
    identifiers: list[dict[str, Any]] = [
        {"system": RESULT_SYSTEM, "value": key},
        {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
    ]
    for uid, what in ((findings.sr_sop_uid, "SR"), (findings.seg_sop_uid, "SEG")):
        if uid:  # the DICOM objects of the same reading
            identifiers.append(
                {
                    "system": DICOM_UID_SYSTEM,
                    "value": f"urn:oid:{uid}",
                    "type": {"text": f"{what} SOP Instance UID"},
                }
            )
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": identifiers,
        "status": "preliminary",
        "category": [{"coding": [_IMAGING]}],
        "code": {"text": "AI brain lesion segmentation"},
        "subject": {"reference": findings.patient_ref},
        "issued": datetime.now(UTC).isoformat(),
        "result": [{"reference": ref} for ref in observation_refs],
        "imagingStudy": [_imaging_study(study_uid)],
        "conclusion": (
            f"{findings.lesion_count} lesion(s), {findings.volume_ml:.1f} mL in total, "
            f"in study {study_uid} (series {series_uid}). "
            f"{NOT_FOR_CLINICAL_USE} ({model} {version})."
        ),
    }
    return DiagnosticReport.model_validate(report).model_dump(mode="json", exclude_none=True)


def authored_by_device(
    report_key: str, targets: list[str], device_ref: str, recorded: str
) -> dict[str, Any]:
    """The Provenance that says the model version (Device) wrote the report and its
    Observations; its id is derived from the report's key (written once, by PUT)."""
    provenance = {
        "resourceType": "Provenance",
        "id": "nn-ai-" + hashlib.sha256(report_key.encode()).hexdigest()[:40],
        "target": [{"reference": ref} for ref in targets],
        "recorded": recorded,
        "activity": {"coding": [_CREATE]},
        "agent": [{"type": {"coding": [_PROVENANCE_AUTHOR]}, "who": {"reference": device_ref}}],
    }
    return Provenance.model_validate(provenance).model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class PublishedReport:
    """Where a reading went in FHIR."""

    report_id: str
    observation_ids: list[str]  # the count, the total, then each lesion's
    lesion_observation_ids: dict[str, str]  # Tracking UID → Observation id
    device_id: str


def publish_device(fhir: FhirClient, model: str, version: str, bundle_sha256: str) -> str:
    """The model version's Device, made once; returns its id."""
    device = device_resource(model, version, bundle_sha256)
    key = device["identifier"][0]["value"]
    stored, _created = fhir.conditional_create(device, system=MODEL_VERSION_SYSTEM, value=key)
    return str(stored["id"])


def publish_lesion_results(
    fhir: FhirClient, findings: LesionFindings, bundle_sha256: str = ""
) -> PublishedReport:
    """The Device, the Observations, then the report that points at them and the Provenance
    that names the Device as their author, each only once.

    A run repeated after a lost answer finds what the first made: every create is conditional
    on the resource's business identifier, and the Provenance's id is derived.
    """
    device_id = publish_device(fhir, findings.model, findings.version, bundle_sha256)
    findings = replace(findings, device_ref=f"Device/{device_id}")
    observation_ids: list[str] = []
    by_tracking_uid: dict[str, str] = {}
    for observation in lesion_observations(findings):
        key = observation["identifier"][0]["value"]
        stored, _created = fhir.conditional_create(observation, system=RESULT_SYSTEM, value=key)
        observation_ids.append(str(stored["id"]))
        tracking_uid = tracking_uid_of(observation)
        if tracking_uid:
            by_tracking_uid[tracking_uid] = str(stored["id"])
    report = lesion_report(findings, [f"Observation/{i}" for i in observation_ids])
    key = report["identifier"][0]["value"]
    stored, _created = fhir.conditional_create(report, system=RESULT_SYSTEM, value=key)
    report_id = str(stored["id"])
    now = datetime.now(UTC).isoformat()
    targets = [f"DiagnosticReport/{report_id}", *(f"Observation/{i}" for i in observation_ids)]
    fhir.update(
        authored_by_device(key, targets, f"Device/{device_id}", str(stored.get("issued") or now))
    )
    return PublishedReport(report_id, observation_ids, by_tracking_uid, device_id)
