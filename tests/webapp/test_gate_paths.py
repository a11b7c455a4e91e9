"""Request lines the gate accepts (and the internal URI it builds), and those it refuses."""

from __future__ import annotations

import pytest

from webapp.gate_paths import GateDenied, parse_dicomweb, parse_wado_uri, split_raw_uri

A = "1.2.826.0.1.1001"
S = "1.2.826.0.1.1001.1"
I = "1.2.826.0.1.1001.1.1"  # noqa: E741
B = "1.2.826.0.1.2002"


def parse(raw: str):  # type: ignore[no-untyped-def]
    path, query = split_raw_uri(raw)
    return (parse_wado_uri if path == "/wado" else parse_dicomweb)(path, query, A)


ALLOWED = [
    (f"/dicom-web/studies?StudyInstanceUID={A}", "qido-studies",
     f"/_orthanc/dicom-web/studies?StudyInstanceUID={A}"),
    (f"/dicom-web/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060&StudyInstanceUID={A}",
     "qido-studies",
     f"/_orthanc/dicom-web/studies?StudyInstanceUID={A}&fuzzymatching=false&includefield=00081030%2C00080060&limit=101&offset=0"),
    (f"/dicom-web/studies/{A}/series", "qido-series", f"/_orthanc/dicom-web/studies/{A}/series"),
    (f"/dicom-web/studies/{A}/series?includefield=00080021", "qido-series",
     f"/_orthanc/dicom-web/studies/{A}/series?includefield=00080021"),
    (f"/dicom-web/studies/{A}/instances", "qido-instances", f"/_orthanc/dicom-web/studies/{A}/instances"),
    (f"/dicom-web/studies/{A}/series/{S}/instances", "qido-instances",
     f"/_orthanc/dicom-web/studies/{A}/series/{S}/instances"),
    (f"/dicom-web/studies/{A}/metadata", "metadata", f"/_orthanc/dicom-web/studies/{A}/metadata"),
    (f"/dicom-web/studies/{A}/series/{S}/metadata", "metadata",
     f"/_orthanc/dicom-web/studies/{A}/series/{S}/metadata"),
    (f"/dicom-web/studies/{A}/series/{S}/instances/{I}/metadata", "metadata",
     f"/_orthanc/dicom-web/studies/{A}/series/{S}/instances/{I}/metadata"),
    (f"/dicom-web/studies/{A}/series/{S}/instances/{I}", "instance",
     f"/_orthanc/dicom-web/studies/{A}/series/{S}/instances/{I}"),
    (f"/dicom-web/studies/{A}/series/{S}/instances/{I}/frames/1,2", "frames",
     f"/_orthanc/dicom-web/studies/{A}/series/{S}/instances/{I}/frames/1,2"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "kind", "internal"), ALLOWED)
def test_allowed_requests_map_to_internal_uris_built_from_parsed_values(
    raw: str, kind: str, internal: str
) -> None:
    request = parse(raw)
    assert request.kind == kind
    assert request.study == A
    assert request.internal_uri() == internal


def test_wado_uri_names_the_instance_and_waits_for_its_archive_id() -> None:
    request = parse(
        f"/wado?requestType=WADO&studyUID={A}&seriesUID={S}&objectUID={I}"
        "&contentType=application%2Fdicom&transferSyntax=*"
    )
    assert (request.kind, request.study, request.series, request.instance) == ("wado-uri", A, S, I)


DENIED = {
    "QIDO without a study filter": ("/dicom-web/studies", 403),
    "QIDO by patient only": ("/dicom-web/studies?00100020=MRN-A", 403),
    "QIDO with another study's filter": (f"/dicom-web/studies?StudyInstanceUID={B}", 403),
    "QIDO with the study twice (A then B)": (
        f"/dicom-web/studies?StudyInstanceUID={A}&StudyInstanceUID={B}", 403),
    "QIDO with the study twice (B then A)": (
        f"/dicom-web/studies?StudyInstanceUID={B}&StudyInstanceUID={A}", 403),
    "QIDO with a wildcard": ("/dicom-web/studies?StudyInstanceUID=*", 403),
    "series search filtered to another study": (
        f"/dicom-web/studies/{A}/series?StudyInstanceUID={B}", 403),
    "another study's metadata": (f"/dicom-web/studies/{B}/metadata", 403),
    "another study's frames": (f"/dicom-web/studies/{B}/series/{S}/instances/{I}/frames/1", 403),
    "whole-study retrieval": (f"/dicom-web/studies/{A}", 403),
    "whole-series retrieval": (f"/dicom-web/studies/{A}/series/{S}", 403),
    "rendered": (f"/dicom-web/studies/{A}/series/{S}/instances/{I}/rendered", 403),
    "bulkdata": (f"/dicom-web/studies/{A}/series/{S}/instances/{I}/bulk/7FE00010", 403),
    "frame zero": (f"/dicom-web/studies/{A}/series/{S}/instances/{I}/frames/0", 403),
    "frames with garbage": (f"/dicom-web/studies/{A}/series/{S}/instances/{I}/frames/1;2", 403),
    "unknown parameter": (f"/dicom-web/studies/{A}/series?PatientName=*", 403),
    "parameters on metadata": (f"/dicom-web/studies/{A}/metadata?includefield=all", 403),
    "traversal": (f"/dicom-web/studies/{A}/../{B}/metadata", 403),
    "encoded traversal": (f"/dicom-web/studies/{A}/%2e%2e/{B}/metadata", 403),
    "double-encoded traversal": (f"/dicom-web/studies/{A}/%252e%252e/{B}/metadata", 403),
    "encoded slash in a UID": (f"/dicom-web/studies/{A}%2F..%2F{B}/metadata", 403),
    "traversal in the series UID": (f"/dicom-web/studies/{A}/series/../../{B}/metadata", 403),
    "encoded traversal in the instance UID": (
        f"/dicom-web/studies/{A}/series/{S}/instances/%2e%2e%2f{I}/metadata", 403),
    "double-encoded traversal in the frame list": (
        f"/dicom-web/studies/{A}/series/{S}/instances/{I}/frames/%252e%252e", 403),
    "backslash": (f"/dicom-web/studies/{A}\\..\\{B}/metadata", 403),
    "empty segment": (f"/dicom-web/studies//{A}/metadata", 403),
    "dot segment": (f"/dicom-web/studies/{A}/./metadata", 403),
    "not a study path": ("/dicom-web/patients", 404),
    "WADO-URI of another study": (f"/wado?requestType=WADO&studyUID={B}&objectUID={I}", 403),
    "WADO-URI without the study": (f"/wado?requestType=WADO&objectUID={I}", 403),
    "WADO-URI asking for JPEG": (
        f"/wado?requestType=WADO&studyUID={A}&objectUID={I}&contentType=image%2Fjpeg", 403),
    "WADO-URI with encoded traversal in the object": (
        f"/wado?requestType=WADO&studyUID={A}&objectUID=..%2F..%2Finstances", 403),
    "WADO-URI with double-encoded traversal": (
        f"/wado?requestType=WADO&studyUID={A}&objectUID=%252e%252e%252f", 403),
    "WADO-URI with the study twice": (
        f"/wado?requestType=WADO&studyUID={A}&studyUID={B}&objectUID={I}", 403),
    "newline after a UID in the query": (f"/dicom-web/studies/{A}/series?SeriesInstanceUID=1.3%0A", 403),
    "newline after a number": (f"/dicom-web/studies/{A}/series?limit=5%0A", 403),
    "carriage return in WADO-URI object": (f"/wado?requestType=WADO&studyUID={A}&objectUID={I}%0D", 403),
    "newline after the study filter": (f"/dicom-web/studies?StudyInstanceUID={A}%0A", 403),
    "fragment": (f"/dicom-web/studies/{A}/metadata#x", 403),
    "too long": ("/dicom-web/studies/" + "1." * 1100 + "1", 403),
}  # fmt: skip


@pytest.mark.parametrize(("raw", "status"), DENIED.values(), ids=DENIED.keys())
def test_requests_outside_the_token_study_or_the_grammar_are_refused(raw: str, status: int) -> None:
    with pytest.raises(GateDenied) as err:
        parse(raw)
    assert err.value.status == status
