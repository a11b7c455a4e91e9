"""The gate on the Flask app: what it redirects, what it refuses, and what it audits."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from common.db import AuditEvent, session_scope
from tests.support.web import STUDY_A, STUDY_B, bearer, login, viewer_token

A, B = STUDY_A, STUDY_B


@pytest.fixture
def token(client: FlaskClient) -> str:
    return viewer_token(client, login(client)["access_token"])


def test_an_allowed_request_is_an_empty_x_accel_redirect_without_our_content_type(
    client: FlaskClient, token: str
) -> None:
    response = client.get(
        f"/dicom-web/studies/{A.study}/series/{A.series}/instances/{A.instances[1]}",
        headers=bearer(token),
    )
    assert response.status_code == 200
    assert response.headers["X-Accel-Redirect"] == (
        f"/_orthanc/dicom-web/studies/{A.study}/series/{A.series}/instances/{A.instances[1]}"
    )
    assert "Content-Type" not in response.headers  # nginx keeps Orthanc's
    assert response.data == b""
    assert "no-store" in response.headers["Cache-Control"]


def test_wado_uri_goes_to_the_archive_file_of_the_indexed_instance(
    client: FlaskClient, token: str
) -> None:
    response = client.get(
        f"/wado?requestType=WADO&studyUID={A.study}&seriesUID={A.series}&objectUID={A.instances[1]}"
        "&contentType=application%2Fdicom",
        headers=bearer(token),
    )
    assert response.status_code == 200
    assert response.headers["X-Accel-Redirect"] == (
        "/_orthanc/instances/00000001-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd/file"
    )


SERIES_A = f"/dicom-web/studies/{A.study}/series/{A.series}"
# name: request line, refused with a 403
DENIED_WITH_A_VALID_TOKEN = {
    "instance of study B named under study A (metadata)": f"{SERIES_A}/instances/{B.instances[0]}/metadata",
    "series of study B named under study A": f"/dicom-web/studies/{A.study}/series/{B.series}/metadata",
    "instance of study B by WADO-URI with study A": f"/wado?requestType=WADO&studyUID={A.study}&objectUID={B.instances[0]}",
    "instance of A with a wrong series by WADO-URI": f"/wado?requestType=WADO&studyUID={A.study}&seriesUID={B.series}&objectUID={A.instances[0]}",
    "an instance the index does not know": f"{SERIES_A}/instances/1.2.3.4.5/frames/1",
    "a series the index does not know": f"/dicom-web/studies/{A.study}/series/1.2.3.4.5/instances",
    "study B": f"/dicom-web/studies/{B.study}/metadata",
    "QIDO without a filter": "/dicom-web/studies",
    "double-encoded traversal": f"/dicom-web/studies/{A.study}/%252e%252e/{B.study}/metadata",
}


@pytest.mark.parametrize(
    "path", DENIED_WITH_A_VALID_TOKEN.values(), ids=DENIED_WITH_A_VALID_TOKEN.keys()
)
def test_requests_outside_the_study_are_refused(client: FlaskClient, token: str, path: str) -> None:
    response = client.get(path, headers=bearer(token))
    assert response.status_code == 403
    assert "X-Accel-Redirect" not in response.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_only_reads_pass(client: FlaskClient, token: str, method: str) -> None:
    response = client.open(
        f"/dicom-web/studies/{A.study}/metadata", method=method, headers=bearer(token)
    )
    assert response.status_code == 403 and "X-Accel-Redirect" not in response.headers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YTpi"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * 9000},
    ],
    ids=["none", "basic", "empty bearer", "oversized"],
)
def test_no_usable_token_is_a_401(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get(f"/dicom-web/studies/{A.study}/metadata", headers=headers)
    assert response.status_code == 401 and "X-Accel-Redirect" not in response.headers


def test_api_tokens_do_not_open_the_gate(client: FlaskClient) -> None:
    tokens = login(client)
    for kind in ("access_token", "refresh_token"):
        response = client.get(
            f"/dicom-web/studies/{A.study}/metadata", headers=bearer(tokens[kind])
        )
        assert response.status_code == 401, kind


def test_the_gate_audits_allowed_and_denied_requests_without_the_token(
    app: Flask, client: FlaskClient, token: str
) -> None:
    client.get(
        f"/dicom-web/studies/{A.study}/series/{A.series}/instances/{A.instances[1]}",
        headers={**bearer(token), "X-Request-ID": "req-0001-allowed"},
    )
    client.get(
        f"/dicom-web/studies/{B.study}/metadata",
        headers={**bearer(token), "X-Request-ID": "req-0002-denied"},
    )
    context = app.extensions["neuronova"]
    context.audit.flush()
    with session_scope(context.database_url) as session:
        rows = {r.request_id: r for r in session.exec(select(AuditEvent))}
    allowed, denied = rows["req-0001-allowed"], rows["req-0002-denied"]
    assert (
        allowed.action,
        allowed.outcome,
        allowed.status,
        allowed.username,
        allowed.study_instance_uid,
    ) == ("instance", "allowed", 200, "alice", A.study)
    assert (denied.outcome, denied.status, denied.reason) == (
        "denied",
        403,
        "another study than the token's",
    )
    assert all(token not in repr(r.model_dump()) for r in rows.values())
    assert allowed.client_addr and allowed.at is not None


def test_a_revoked_viewer_jti_is_refused(app: Flask, client: FlaskClient, token: str) -> None:
    from datetime import UTC, datetime, timedelta

    from webapp import accounts
    from webapp.accounts import TokenType
    from webapp.tokens import verify_viewer_token

    context = app.extensions["neuronova"]
    claims = verify_viewer_token(context.viewer_key, token)
    with session_scope(context.database_url) as session:
        accounts.revoke_token(
            session, claims.jti, TokenType.VIEWER, None, datetime.now(UTC) + timedelta(hours=1)
        )
    assert (
        client.get(f"/dicom-web/studies/{A.study}/metadata", headers=bearer(token)).status_code
        == 401
    )


def test_requests_refused_before_parsing_are_audited_by_where_they_went(
    app: Flask, client: FlaskClient
) -> None:
    client.get(f"/dicom-web/studies/{A.study}/metadata", headers={"X-Request-ID": "req-0003-dw"})
    client.get(
        f"/wado?requestType=WADO&studyUID={A.study}&objectUID={A.instances[0]}",
        headers={"X-Request-ID": "req-0004-wado"},
    )
    context = app.extensions["neuronova"]
    with session_scope(context.database_url) as session:
        rows = {r.request_id: r for r in session.exec(select(AuditEvent))}
    assert [(r.action, r.outcome, r.status) for r in rows.values()] == [
        ("dicomweb", "denied", 401),
        ("wado-uri", "denied", 401),
    ]
