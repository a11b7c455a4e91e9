"""The front door on the Flask app: sign-in page, session cookie, CSRF, worklist, open, sign-out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from common.db import AuditEvent, BreakGlassGrant, session_scope
from tasks.patients.cache import save_patient
from tests.support.web import (
    ORIGIN,
    PASSWORD,
    STUDY_A,
    STUDY_B,
    add_reading,
    bearer,
    csrf_of,
    login,
    sign_in,
)
from webapp import accounts

A, B = STUDY_A, STUDY_B
SESSION_COOKIE = "__Host-neuronova_session"  # the test gateway is https


def _set_cookie(response: object, name: str) -> str:
    headers = response.headers.getlist("Set-Cookie")  # type: ignore[attr-defined]
    (cookie,) = [h for h in headers if h.startswith(f"{name}=")]
    return str(cookie)


def test_the_root_is_a_sign_in_form_under_a_strict_policy(client: FlaskClient) -> None:
    page = client.get("/")

    assert page.status_code == 200 and page.mimetype == "text/html"
    assert 'for="username"' in page.text and 'for="password"' in page.text  # labelled
    assert csrf_of(page.text)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert page.headers["Cache-Control"] == "no-store"
    cookie = _set_cookie(page, "__Host-neuronova_signin")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    assert client.get("/worklist/static/app.css").status_code == 200


def test_signing_in_sets_the_session_cookie_and_shows_only_the_users_studies(
    client: FlaskClient,
) -> None:
    form = client.get("/")
    answer = client.post(
        "/",
        data={"csrf": csrf_of(form.text), "username": "alice", "password": PASSWORD},
        headers={"Origin": ORIGIN},
    )

    assert answer.status_code == 303 and answer.headers["Location"] == "/worklist"
    cookie = _set_cookie(answer, SESSION_COOKIE)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie
    page = client.get("/worklist")
    assert A.study in page.text and A.patient_id in page.text
    assert B.study not in page.text and B.patient_id not in page.text
    assert client.get("/").headers["Location"] == "/worklist"  # signed in: the root moves on


def test_a_radiologist_sees_every_study(client: FlaskClient) -> None:
    sign_in(client, "rad")
    page = client.get("/worklist").text
    assert A.study in page and B.study in page


def test_unknown_user_and_wrong_password_get_the_same_answer(client: FlaskClient) -> None:
    answers = []
    for username, password in (("alice", "wrong-password-1"), ("nobody", PASSWORD)):
        form = client.get("/")
        answers.append(
            client.post(
                "/",
                data={"csrf": csrf_of(form.text), "username": username, "password": password},
            )
        )
    assert [a.status_code for a in answers] == [401, 401]
    errors = [re.search(r'role="alert"[^>]*>([^<]+)<', a.text) for a in answers]
    assert errors[0] and errors[1] and errors[0].group(1) == errors[1].group(1)
    assert all(SESSION_COOKIE not in " ".join(a.headers.getlist("Set-Cookie")) for a in answers)


def test_failures_count_across_the_form_and_the_api(client: FlaskClient) -> None:
    for _ in range(3):  # login_max_failures in the test settings
        assert client.post("/api/auth/login", json={"username": "alice", "password": "x" * 12})
    form = client.get("/")
    answer = client.post(
        "/", data={"csrf": csrf_of(form.text), "username": "alice", "password": PASSWORD}
    )
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        ({"username": "alice", "password": PASSWORD}, {}),
        ({"username": "alice", "password": PASSWORD, "csrf": "0" * 64}, {}),
        (
            {"username": "alice", "password": PASSWORD, "csrf": "@valid"},
            {"Origin": "https://evil.example"},
        ),
    ],
    ids=["no token", "wrong token", "another origin"],
)
def test_a_sign_in_without_its_token_or_from_elsewhere_is_refused(
    client: FlaskClient, data: dict[str, str], headers: dict[str, str]
) -> None:
    form = client.get("/")
    if data.get("csrf") == "@valid":
        data = data | {"csrf": csrf_of(form.text)}
    answer = client.post("/", data=data, headers=headers)
    assert answer.status_code == 403
    assert SESSION_COOKIE not in " ".join(answer.headers.getlist("Set-Cookie"))


def test_a_browser_under_no_referrer_signs_in_by_sec_fetch_site(client: FlaskClient) -> None:
    """Our Referrer-Policy makes a browser send `Origin: null`; Sec-Fetch-Site says same-origin."""
    form = client.get("/")
    answer = client.post(
        "/",
        data={"csrf": csrf_of(form.text), "username": "alice", "password": PASSWORD},
        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 303


def test_worklist_forms_need_the_sessions_token_and_our_origin(
    app: Flask, client: FlaskClient
) -> None:
    csrf = sign_in(client)
    assert client.post("/worklist/open", data={"study": A.study}).status_code == 403
    other = client.post("/worklist/open", data={"study": A.study, "csrf": "1" * 64})
    assert other.status_code == 403
    cross = client.post(
        "/worklist/sign-out", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert client.get("/worklist").status_code == 200  # still signed in
    app.extensions["neuronova"].audit.flush()
    with session_scope(app.extensions["neuronova"].database_url) as session:
        refused = session.exec(select(AuditEvent).where(AuditEvent.action == "page")).all()
    assert len(refused) == 3 and all(r.username == "alice" for r in refused)
    assert all(csrf not in (r.reason or "") for r in refused)


def test_pages_without_a_session_go_to_the_sign_in_page(client: FlaskClient) -> None:
    assert client.get("/worklist").headers["Location"] == "/"
    assert client.post("/worklist/open", data={"study": A.study}).headers["Location"] == "/"
    client.set_cookie(SESSION_COOKIE, "forged.token.value", domain="localhost")
    assert client.get("/worklist").headers["Location"] == "/"


def test_search_narrows_the_list_and_never_widens_it(app: Flask, client: FlaskClient) -> None:
    url = app.extensions["neuronova"].database_url
    for mrn, given, family in (
        (A.patient_id, "Ada", "Lovelace"),
        (B.patient_id, "Bob", "Stone"),
    ):
        resource = {"resourceType": "Patient", "name": [{"given": [given], "family": family}]}
        save_patient(url, mrn=mrn, resource=resource, source="fhir", fhir_pending=False)
    sign_in(client)

    page = client.get("/worklist").text
    assert "Ada Lovelace" in page and "Bob Stone" not in page
    for typed in ("lovelace", "Ada Lovelace", "lovelace ada", "Lovelace, Ada", "ada  love"):
        assert A.study in client.get("/worklist", query_string={"name": typed}).text, typed
    for typed in ("stone", "Ada Stone", "%", "_da", "ada x"):  # LIKE's wildcards are letters here
        assert A.study not in client.get("/worklist", query_string={"name": typed}).text, typed
    by_mrn = client.get(f"/worklist?mrn={B.patient_id}").text  # another clinician's patient
    assert B.study not in by_mrn and "Bob Stone" not in by_mrn and "No study to show" in by_mrn
    assert A.study in client.get(f"/worklist?mrn={A.patient_id}").text
    assert A.study not in client.get("/worklist?from=2999-01-01").text


def test_the_ai_column_says_what_the_readings_found(app: Flask, client: FlaskClient) -> None:
    add_reading(app.extensions["neuronova"].database_url, A, lesions=2, volume_ml=3.45)
    sign_in(client)
    assert "2 lesions, 3.5 mL" in client.get("/worklist").text


def test_open_follows_a_one_use_viewer_link_bound_to_this_session(client: FlaskClient) -> None:
    csrf = sign_in(client)

    opened = client.post("/worklist/open", data={"study": A.study, "csrf": csrf})

    assert opened.status_code == 303
    location = urlsplit(opened.headers["Location"])
    assert location.path == "/view" and not location.query  # the token only in the fragment
    (token,) = parse_qs(location.fragment)["token"]
    viewer = client.post("/view", json={"token": token})
    assert viewer.status_code == 200
    assert client.post("/view", json={"token": token}).status_code == 401  # one use
    refused = client.post("/worklist/open", data={"study": B.study, "csrf": csrf})
    assert refused.status_code == 403 and "/view" not in refused.headers.get("Location", "")


def test_sign_out_ends_the_page_and_the_viewer_it_opened(client: FlaskClient) -> None:
    csrf = sign_in(client)
    opened = client.post("/worklist/open", data={"study": A.study, "csrf": csrf})
    (link,) = parse_qs(urlsplit(opened.headers["Location"]).fragment)["token"]
    viewer = client.post("/view", json={"token": link}).get_json()["token"]
    series = f"/dicom-web/studies/{A.study}/series/{A.series}/instances/{A.instances[0]}"
    assert client.get(series, headers=bearer(viewer)).status_code == 200

    out = client.post("/worklist/sign-out", data={"csrf": csrf}, headers={"Origin": ORIGIN})

    assert out.status_code == 303 and out.headers["Location"] == "/"
    assert client.get("/worklist").headers["Location"] == "/"
    assert client.get(series, headers=bearer(viewer)).status_code == 401


def test_a_password_change_ends_the_browser_session(app: Flask, client: FlaskClient) -> None:
    sign_in(client)
    with session_scope(app.extensions["neuronova"].database_url) as session:
        accounts.set_password(session, "alice", "a-new-password-42")
    assert client.get("/worklist").headers["Location"] == "/"


def test_the_api_login_still_answers_tokens(client: FlaskClient) -> None:
    tokens: dict[str, object] = dict(login(client))
    assert tokens["token_type"] == "Bearer" and tokens["user"] == {
        "username": "alice",
        "role": "clinician",
    }


def test_the_row_fragment_is_the_users_own_studies_only(client: FlaskClient) -> None:
    assert client.get(f"/worklist/row?study={A.study}").status_code == 401
    sign_in(client)

    own = client.get(f"/worklist/row?study={A.study}")

    assert own.status_code == 200 and own.text.lstrip().startswith(f'<tr data-study="{A.study}"')
    other = client.get(f"/worklist/row?study={B.study}")
    unknown = client.get("/worklist/row?study=1.2.3.4")
    assert other.status_code == unknown.status_code == 404 and other.text == unknown.text
    assert client.get("/worklist/row?study=not-a-uid").status_code == 404


def test_the_pages_alert_stream_needs_the_session_cookie(client: FlaskClient) -> None:
    assert client.get("/worklist/alerts").status_code == 401
    sign_in(client)
    # Signed in, the stream is opened (here no Redis is configured: 503, not 401).
    assert client.get("/worklist/alerts").status_code == 503


def _break_glass(client: FlaskClient, csrf: str, mrn: str, reason: str) -> object:
    return client.post(
        "/worklist/break-glass",
        data={"csrf": csrf, "mrn": mrn, "reason": reason},
        headers={"Origin": ORIGIN},
    )


def test_break_glass_needs_the_full_mrn_and_a_reason_and_then_opens_the_patient(
    app: Flask, client: FlaskClient
) -> None:
    csrf = sign_in(client)
    assert client.get("/worklist/break-glass").status_code == 200
    series = f"/worklist/row?study={B.study}"
    assert client.get(series).status_code == 404

    no_reason = _break_glass(client, csrf, B.patient_id, "")
    partial = _break_glass(client, csrf, B.patient_id[:-1], "patient arrived unconscious")
    unknown = _break_glass(client, csrf, "MRN-NOBODY", "patient arrived unconscious")

    assert no_reason.status_code == 400  # type: ignore[attr-defined]
    assert partial.status_code == unknown.status_code == 404  # type: ignore[attr-defined]
    assert client.get(series).status_code == 404  # nothing opened
    assert B.study not in client.get(f"/worklist?mrn={B.patient_id}").text

    opened = _break_glass(client, csrf, B.patient_id, "patient arrived unconscious in ER")

    assert opened.status_code == 303  # type: ignore[attr-defined]
    assert opened.headers["Location"] == f"/worklist?mrn={B.patient_id}"  # type: ignore[attr-defined]
    assert B.study in client.get(f"/worklist?mrn={B.patient_id}").text
    assert client.get(series).status_code == 200
    link = client.post("/worklist/open", data={"study": B.study, "csrf": csrf})
    assert link.status_code == 303  # and the gate lets the viewer in (the same policy)
    (token,) = parse_qs(urlsplit(link.headers["Location"]).fragment)["token"]
    viewer = client.post("/view", json={"token": token}).get_json()["token"]
    instance = f"/dicom-web/studies/{B.study}/series/{B.series}/instances/{B.instances[0]}"
    assert client.get(instance, headers=bearer(viewer)).status_code == 200

    # Expired: the patient is closed again, on every door.
    url = app.extensions["neuronova"].database_url
    with session_scope(url) as session:
        for grant in session.exec(select(BreakGlassGrant)).all():
            grant.expires_at = datetime.now(UTC) - timedelta(seconds=1)
            session.add(grant)
    assert client.get(series).status_code == 404
    assert client.get(instance, headers=bearer(viewer)).status_code in (401, 403)
    app.extensions["neuronova"].audit.flush()
    with session_scope(url) as session:
        glass = session.exec(select(AuditEvent).where(AuditEvent.action == "break-glass")).all()
    assert sorted(e.status for e in glass) == [200, 400, 404, 404]
    (granted,) = [e for e in glass if e.status == 200]
    assert granted.patient_id == B.patient_id and "unconscious" in (granted.reason or "")


def test_only_admins_see_the_break_glass_log(client: FlaskClient, app: Flask) -> None:
    url = app.extensions["neuronova"].database_url
    with session_scope(url) as session:
        accounts.add_user(session, "ada", "admin", PASSWORD)
    csrf = sign_in(client)
    assert client.get("/worklist/break-glass/log").status_code == 403
    _break_glass(client, csrf, B.patient_id, "covering for a colleague on call")
    client.post("/worklist/sign-out", data={"csrf": csrf})

    sign_in(client, "ada")
    log = client.get("/worklist/break-glass/log")

    assert log.status_code == 200
    assert (
        "alice" in log.text and B.patient_id in log.text and "covering for a colleague" in log.text
    )
    # An admin opens every study: no break-glass form for them.
    assert client.get("/worklist/break-glass").headers["Location"] == "/worklist"


@pytest.mark.parametrize(
    ("state", "reading", "shown"),
    [
        ("queued", False, "AI queued"),
        ("running", False, "AI reading…"),
        ("failed", False, "AI failed"),
        ("done", True, "2 lesions, 3.5 mL"),
        ("running", True, "AI reading…"),  # a new series is being read
        ("failed", True, "2 lesions, 3.5 mL"),  # a later run failed: the reading still stands
    ],
)
def test_the_ai_column_follows_the_runs_state(
    app: Flask, client: FlaskClient, state: str, reading: bool, shown: str
) -> None:
    from common.db import Study

    url = app.extensions["neuronova"].database_url
    with session_scope(url) as session:
        study = session.get(Study, A.study)
        assert study is not None
        study.ai_state = state
        session.add(study)
    if reading:
        add_reading(url, A, lesions=2, volume_ml=3.45)
    sign_in(client)
    assert shown in client.get("/worklist").text
