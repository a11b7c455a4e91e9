"""The AI result as FHIR: valid R4 resources, idempotency keys, the study named."""

from __future__ import annotations

from tasks.inference.report import (
    DICOM_UID_SYSTEM,
    MODEL_VERSION_SYSTEM,
    NOT_FOR_CLINICAL_USE,
    RESULT_SYSTEM,
    SNOMED,
    LesionFinding,
    LesionFindings,
    authored_by_device,
    device_resource,
    lesion_observations,
    lesion_report,
    tracking_uid_of,
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


TRACKING = ("1.2.826.0.1.3680043.10.1245.9.1", "1.2.826.0.1.3680043.10.1245.9.2")


def _two_lesions() -> LesionFindings:
    return LesionFindings(
        "Patient/p1",
        STUDY,
        SERIES,
        "brain_lesion_seg",
        "0.1.0",
        lesion_count=2,
        volume_ml=5.5,
        lesions=(
            LesionFinding(1, TRACKING[0], "Lesion 1", 4.25),
            LesionFinding(2, TRACKING[1], "Lesion 2", 1.25),
        ),
        device_ref="Device/d1",
        seg_sop_uid="1.2.3.4.5",
        sr_sop_uid="1.2.3.4.6",
    )


def test_each_lesion_is_an_observation_of_its_own_with_its_tracking_uid() -> None:
    count, total, first, second = lesion_observations(_two_lesions())
    assert count["valueInteger"] == 2 and total["valueQuantity"]["value"] == 5.5
    assert first["valueQuantity"]["value"] == 4.25 and second["valueQuantity"]["value"] == 1.25
    assert [tracking_uid_of(o) for o in (count, total, first, second)] == [None, None, *TRACKING]
    assert first["identifier"][0]["value"].endswith(":lesion-1")
    assert {"system": SNOMED, "code": "118565006", "display": "Volume"} in first["code"]["coding"]
    assert first["bodySite"]["coding"][0]["code"] == "12738006"  # brain structure
    assert first["derivedFrom"] == [
        {
            "type": "ImagingStudy",
            "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY}"},
        }
    ]
    assert all(o["device"]["reference"] == "Device/d1" for o in (count, total, first, second))


def test_the_report_names_its_sr_and_seg() -> None:
    report = lesion_report(_two_lesions(), ["Observation/a"])
    named = {i["value"]: i.get("type", {}).get("text") for i in report["identifier"]}
    assert named["urn:oid:1.2.3.4.6"] == "SR SOP Instance UID"
    assert named["urn:oid:1.2.3.4.5"] == "SEG SOP Instance UID"


def test_the_model_version_is_a_device_with_its_bundle_hash() -> None:
    device = device_resource("brain_lesion_seg", "0.1.0", "ab" * 32)
    assert device["identifier"] == [
        {"system": MODEL_VERSION_SYSTEM, "value": "brain-lesion-seg:0.1.0"}
    ]
    assert device["status"] == "active" and device["version"] == [{"value": "0.1.0"}]
    assert device["property"][0]["valueCode"][0]["text"] == "ab" * 32


def test_the_device_is_the_author_of_the_report_by_a_provenance_with_a_derived_id() -> None:
    targets = ["DiagnosticReport/r", "Observation/a"]
    first = authored_by_device("key", targets, "Device/d1", "2026-12-07T07:00:00+00:00")
    again = authored_by_device("key", targets, "Device/d1", "2026-12-07T07:00:00+00:00")
    assert first == again and first["id"].startswith("nn-ai-") and len(first["id"]) <= 64
    assert first["agent"][0]["who"] == {"reference": "Device/d1"}
    assert [t["reference"] for t in first["target"]] == targets
