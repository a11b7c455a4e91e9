"""The AI result as FHIR: valid R4 resources, idempotency keys, the study named."""

from __future__ import annotations

from tasks.inference.report import (
    DICOM_UID_SYSTEM,
    NOT_FOR_CLINICAL_USE,
    RESULT_SYSTEM,
    LesionFindings,
    lesion_observations,
    lesion_report,
)

STUDY = "1.2.826.0.1.3680043.10.1245.1"
SERIES = "1.2.826.0.1.3680043.10.1245.1.7"


def test_observations_carry_count_volume_and_a_stable_key() -> None:
    count, volume = lesion_observations(
        LesionFindings(
            "Patient/p1", STUDY, SERIES, "brain_lesion_seg", "0.1.0", lesion_count=3, volume_ml=4.25
        )
    )
    assert count["valueInteger"] == 3
    assert volume["valueQuantity"] == {
        "value": 4.25,
        "unit": "mL",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert count["identifier"][0] == {
        "system": RESULT_SYSTEM,
        "value": f"{STUDY}:{SERIES}:brain-lesion-seg:0.1.0:lesion-count",
    }
    assert all(
        o["status"] == "preliminary" and o["subject"] == {"reference": "Patient/p1"}
        for o in (count, volume)
    )
    assert NOT_FOR_CLINICAL_USE in count["note"][0]["text"]


def test_the_report_names_the_study_and_its_results() -> None:
    report = lesion_report(
        LesionFindings(
            "Patient/p1", STUDY, SERIES, "brain_lesion_seg", "0.1.0", lesion_count=2, volume_ml=1.5
        ),
        ["Observation/a", "Observation/b"],
    )
    assert {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY}"} in report["identifier"]
    assert [r["reference"] for r in report["result"]] == ["Observation/a", "Observation/b"]
    assert STUDY in report["conclusion"] and NOT_FOR_CLINICAL_USE in report["conclusion"]
    assert SERIES in report["conclusion"]
