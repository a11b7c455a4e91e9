"""Request lines the gate accepts (and the internal URI it builds), and those it refuses."""

from __future__ import annotations

import itertools

import pytest

from webapp.gate_paths import (
    ROUTES,
    GateDenied,
    GateKind,
    GateRequest,
    parse_request,
    split_raw_uri,
)

A = "1.2.826.0.1.1001"
S = "1.2.826.0.1.1001.1"
I = "1.2.826.0.1.1001.1.1"  # noqa: E741
B = "1.2.826.0.1.2002"
STUDY = f"/dicom-web/studies/{A}"
SERIES = f"{STUDY}/series/{S}"
INSTANCE = f"{SERIES}/instances/{I}"
WADO = f"/wado?requestType=WADO&studyUID={A}"


def parse(raw: str) -> GateRequest:
    return parse_request(*split_raw_uri(raw), A)


# request line: (kind, internal URI)
ALLOWED = {
    f"/dicom-web/studies?StudyInstanceUID={A}": (
        GateKind.QIDO_STUDIES,
        f"/_orthanc/dicom-web/studies?StudyInstanceUID={A}",
    ),
    f"/dicom-web/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060&StudyInstanceUID={A}": (
        GateKind.QIDO_STUDIES,
        f"/_orthanc/dicom-web/studies?StudyInstanceUID={A}&fuzzymatching=false&includefield=00081030%2C00080060&limit=101&offset=0",
    ),
    f"{STUDY}/series": (GateKind.QIDO_SERIES, f"/_orthanc{STUDY}/series"),
    f"{STUDY}/series?includefield=00080021": (
        GateKind.QIDO_SERIES,
        f"/_orthanc{STUDY}/series?includefield=00080021",
    ),
    f"{STUDY}/series?Modality=MR&StudyInstanceUID={A}": (
        GateKind.QIDO_SERIES,
        f"/_orthanc{STUDY}/series?Modality=MR&StudyInstanceUID={A}",
    ),
    f"{STUDY}/instances": (GateKind.QIDO_INSTANCES, f"/_orthanc{STUDY}/instances"),
    f"{STUDY}/instances?SeriesInstanceUID={S}": (
        GateKind.QIDO_INSTANCES,
        f"/_orthanc{STUDY}/instances?SeriesInstanceUID={S}",
    ),
    f"{SERIES}/instances": (GateKind.QIDO_INSTANCES, f"/_orthanc{SERIES}/instances"),
    f"{SERIES}/instances?SeriesInstanceUID={S}&StudyInstanceUID={A}&SOPInstanceUID={I}": (
        GateKind.QIDO_INSTANCES,
        f"/_orthanc{SERIES}/instances?SOPInstanceUID={I}&SeriesInstanceUID={S}&StudyInstanceUID={A}",
    ),
    f"{STUDY}/metadata": (GateKind.METADATA, f"/_orthanc{STUDY}/metadata"),
    f"{SERIES}/metadata": (GateKind.METADATA, f"/_orthanc{SERIES}/metadata"),
    f"{INSTANCE}/metadata": (GateKind.METADATA, f"/_orthanc{INSTANCE}/metadata"),
    STUDY: (GateKind.RETRIEVE_STUDY, f"/_orthanc{STUDY}"),
    SERIES: (GateKind.RETRIEVE_SERIES, f"/_orthanc{SERIES}"),
    INSTANCE: (GateKind.INSTANCE, f"/_orthanc{INSTANCE}"),
    f"{INSTANCE}/frames/1": (GateKind.FRAMES, f"/_orthanc{INSTANCE}/frames/1"),
    f"{INSTANCE}/frames/1,2": (GateKind.FRAMES, f"/_orthanc{INSTANCE}/frames/1,2"),
}


@pytest.mark.parametrize(("raw", "expected"), ALLOWED.items(), ids=list(ALLOWED))
def test_allowed_requests_map_to_internal_uris_built_from_parsed_values(
    raw: str, expected: tuple[GateKind, str]
) -> None:
    request = parse(raw)
    assert (request.kind, request.internal_uri()) == expected
    assert request.study == A


@pytest.mark.parametrize(
    ("raw", "series"),
    [
        (f"{WADO}&seriesUID={S}&objectUID={I}&contentType=application%2Fdicom&transferSyntax=*", S),
        (f"{WADO}&objectUID={I}", None),
    ],
)
def test_wado_uri_names_the_instance_and_waits_for_its_archive_id(
    raw: str, series: str | None
) -> None:
    request = parse(raw)
    assert (request.kind, request.study, request.series, request.instance) == (
        GateKind.WADO_URI,
        A,
        series,
        I,
    )
    assert request.internal_path == ""


# name: request line, refused with a 403
REFUSED = {
    "QIDO without a study filter": "/dicom-web/studies",
    "QIDO with another study's filter": f"/dicom-web/studies?StudyInstanceUID={B}",
    "QIDO with the study twice (A then B)": f"/dicom-web/studies?StudyInstanceUID={A}&StudyInstanceUID={B}",
    "QIDO with the study twice (B then A)": f"/dicom-web/studies?StudyInstanceUID={B}&StudyInstanceUID={A}",
    "QIDO with a wildcard": "/dicom-web/studies?StudyInstanceUID=*",
    "QIDO with a WADO-URI parameter": f"/dicom-web/studies?studyUID={A}",
    "series search filtered to another study": f"{STUDY}/series?StudyInstanceUID={B}",
    "instance search filtered to another study": f"{STUDY}/instances?StudyInstanceUID={B}",
    "instance search filtered to another series": f"{SERIES}/instances?SeriesInstanceUID={B}",
    "another study's metadata": f"/dicom-web/studies/{B}/metadata",
    "another study's frames": f"/dicom-web/studies/{B}/series/{S}/instances/{I}/frames/1",
    "malformed study UID": "/dicom-web/studies/1.2.3a/metadata",
    "malformed series UID": f"{STUDY}/series/1..2/metadata",
    "malformed instance UID": f"{SERIES}/instances/x/frames/1",
    "another study's whole retrieval": f"/dicom-web/studies/{B}",
    "another study's series retrieval": f"/dicom-web/studies/{B}/series/{S}",
    "a parameter on a series retrieval": f"{SERIES}?includefield=all",
    "instance outside a series path": f"{STUDY}/instances/{I}",
    "rendered": f"{INSTANCE}/rendered",
    "thumbnail": f"{SERIES}/thumbnail",
    "bulkdata": f"{INSTANCE}/bulk/7FE00010",
    "frame zero": f"{INSTANCE}/frames/0",
    "frames with garbage": f"{INSTANCE}/frames/1;2",
    "frames without a list": f"{INSTANCE}/frames",
    "rendered frames": f"{INSTANCE}/frames/1/rendered",
    "unknown parameter": f"{STUDY}/series?PatientName=*",
    "parameters on metadata": f"{STUDY}/metadata?includefield=all",
    "parameters on an instance": f"{INSTANCE}?includefield=all",
    "parameters on frames": f"{INSTANCE}/frames/1?StudyInstanceUID={A}",
    "traversal": f"{STUDY}/../{B}/metadata",
    "encoded traversal": f"{STUDY}/%2e%2e/{B}/metadata",
    "double-encoded traversal": f"{STUDY}/%252e%252e/{B}/metadata",
    "encoded slash in a UID": f"{STUDY}%2F..%2F{B}/metadata",
    "traversal in the series UID": f"{STUDY}/series/../../{B}/metadata",
    "encoded traversal in the instance UID": f"{SERIES}/instances/%2e%2e%2f{I}/metadata",
    "double-encoded traversal in the frame list": f"{INSTANCE}/frames/%252e%252e",
    "traversal out of the DICOMweb root": "/dicom-web/../_orthanc/instances",
    "backslash": f"{STUDY}\\..\\{B}/metadata",
    "empty segment": f"/dicom-web/studies//{A}/metadata",
    "dot segment": f"{STUDY}/./metadata",
    "WADO-URI of another study": f"/wado?requestType=WADO&studyUID={B}&objectUID={I}",
    "WADO-URI without the study": f"/wado?requestType=WADO&objectUID={I}",
    "WADO-URI without the object": WADO,
    "WADO-URI without the request type": f"/wado?studyUID={A}&objectUID={I}",
    "WADO-URI with a QIDO parameter": f"{WADO}&objectUID={I}&StudyInstanceUID={A}",
    "WADO-URI asking for JPEG": f"{WADO}&objectUID={I}&contentType=image%2Fjpeg",
    "WADO-URI with encoded traversal in the object": f"{WADO}&objectUID=..%2F..%2Finstances",
    "WADO-URI with double-encoded traversal": f"{WADO}&objectUID=%252e%252e%252f",
    "WADO-URI with the study twice": f"{WADO}&studyUID={B}&objectUID={I}",
    "newline after a UID in the query": f"{STUDY}/series?SeriesInstanceUID=1.3%0A",
    "newline after a number": f"{STUDY}/series?limit=5%0A",
    "carriage return in WADO-URI object": f"{WADO}&objectUID={I}%0D",
    "newline after the study filter": f"/dicom-web/studies?StudyInstanceUID={A}%0A",
    "fragment": f"{STUDY}/metadata#x",
    "too long": "/dicom-web/studies/" + "1." * 1100 + "1",
}
# name: request line, answered 404
NOT_FOUND = {
    "not a study path": "/dicom-web/patients",
    "the DICOMweb root itself": "/dicom-web",
    "below the WADO-URI path": f"/wado/x?requestType=WADO&studyUID={A}&objectUID={I}",
    "a relative path": "dicom-web/studies",
}


@pytest.mark.parametrize(
    ("raw", "status"),
    [*((raw, 403) for raw in REFUSED.values()), *((raw, 404) for raw in NOT_FOUND.values())],
    ids=[*REFUSED, *NOT_FOUND],
)
def test_requests_outside_the_token_study_or_the_grammar_are_refused(raw: str, status: int) -> None:
    with pytest.raises(GateDenied) as err:
        parse(raw)
    assert err.value.status == status


# The audit trail keeps these reasons: one request line, one fault each.
REASONS = {
    f"/dicom-web/studies?StudyInstanceUID={B}": "study search must be limited to the token's study",
    f"/dicom-web/studies/{B}/metadata": "another study than the token's",
    f"{STUDY}/series?StudyInstanceUID={B}": "another study than the token's",
    f"{SERIES}/instances?SeriesInstanceUID={B}": "another series than the path's",
    f"{STUDY}/series/1..2/metadata": "malformed UID in path",
    f"{INSTANCE}/frames/0": "DICOMweb request not offered through the viewer gate",
    f"{STUDY}/metadata?includefield=all": "query parameters are only accepted on searches",
    f"{STUDY}/series?PatientName=*": "query parameter not allowed: 'PatientName'",
    f"{STUDY}/series?limit=1&limit=2": "query parameter repeated: limit",
    f"{STUDY}/series?limit=x": "malformed value for limit",
    f"{STUDY}/./metadata": "empty or relative path segment",
    "/dicom-web/patients": "unknown DICOMweb resource",
    WADO: "WADO-URI needs objectUID",
}


@pytest.mark.parametrize(("raw", "reason"), REASONS.items(), ids=list(REASONS))
def test_a_refusal_names_its_fault(raw: str, reason: str) -> None:
    with pytest.raises(GateDenied) as err:
        parse(raw)
    assert err.value.reason == reason


def test_no_request_has_the_shape_of_two_routes() -> None:
    """So the order of ROUTES never decides what a request reads."""
    for first, second in itertools.combinations(ROUTES, 2):
        assert len(first.segments) != len(second.segments) or any(
            a != b and not (a.startswith("{") or b.startswith("{"))
            for a, b in zip(first.segments, second.segments, strict=True)
        ), (first.path, second.path)


def test_zero_padded_uids_pass_the_gate_as_they_pass_ingest() -> None:
    """The one UID rule (`tasks/dicom/uid.py`): what ingest stores, the gate lets the viewer read.
    This gate refused such UIDs until the rule was shared."""
    study, series, instance = "1.2.840.0113654.1", "1.2.840.0113654.1.07", "1.2.840.0113654.1.07.1"
    raw = f"/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/1"
    request = parse_request(*split_raw_uri(raw), study)
    assert request.kind == GateKind.FRAMES
    assert request.internal_uri() == f"/_orthanc{raw}"


def test_a_search_by_patient_alone_is_narrowed_to_the_tokens_study() -> None:
    """OHIF's look-up of the patient's other studies: answered, with the token's study only."""
    request = parse(
        "/dicom-web/studies?00100020=NN-TEST-A&limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060"
    )

    assert request.kind is GateKind.QIDO_STUDIES and request.study == A
    assert dict(request.query)["StudyInstanceUID"] == A
    assert dict(request.query)["00100020"] == "NN-TEST-A"  # kept: it can only narrow further
    assert request.note == "patient search narrowed to the token's study"
    assert parse(f"/dicom-web/studies?PatientID=NN-TEST-A&StudyInstanceUID={A}").note is None


@pytest.mark.parametrize(
    "raw",
    [
        "/dicom-web/studies?00100020=NN*",  # no wildcard: an MRN or nothing
        "/dicom-web/studies?PatientID=",
        f"/dicom-web/studies?00100020=NN-TEST-A&StudyInstanceUID={B}",  # another study stays out
    ],
)
def test_patient_filters_never_widen_a_search(raw: str) -> None:
    with pytest.raises(GateDenied):
        parse(raw)
