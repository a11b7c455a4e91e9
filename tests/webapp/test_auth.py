"""Login, refresh, logout, the study list and viewer links, on the Flask app with its database."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from common.db import AuditEvent, LoginFailure, session_scope
from tests.support.web import PASSWORD, STUDY_A, STUDY_B, bearer, login, viewer_token


def _audit(app: Flask) -> list[AuditEvent]:
    context = app.extensions["neuronova"]
    context.audit.flush()
    with session_scope(context.database_url) as session:
        return list(session.exec(select(AuditEvent).order_by(AuditEvent.id)))  # type: ignore[arg-type]


def test_login_returns_access_and_refresh_tokens(client: FlaskClient) -> None:
    tokens = login(client)
    assert tokens["token_type"] == "Bearer"
    assert tokens["user"] == {"username": "alice", "role": "clinician"}
    assert tokens["access_token"] != tokens["refresh_token"]
    assert client.get("/api/studies", headers=bearer(tokens["access_token"])).status_code == 200


def test_unknown_user_and_wrong_password_get_the_same_answer(client: FlaskClient) -> None:
    unknown = client.post("/api/auth/login", json={"username": "mallory", "password": PASSWORD})
    wrong = client.post("/api/auth/login", json={"username": "alice", "password": "not it at all"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.get_json() == wrong.get_json()
    assert set(unknown.headers) - {"Content-Length"} == set(wrong.headers) - {"Content-Length"}


def test_malformed_login_bodies_are_refused(client: FlaskClient) -> None:
    for body in (
        None,
        [],
        {"username": "alice"},
        {"username": 1, "password": "x"},
        {"username": "", "password": "x"},
    ):
        response = client.post("/api/auth/login", json=body)
        assert response.status_code == 400, body


def test_repeated_failures_are_rate_limited_even_for_the_right_password(
    app: Flask, client: FlaskClient
) -> None:
    for _ in range(3):  # login_max_failures=3 in the test settings
        assert (
            client.post(
                "/api/auth/login", json={"username": "alice", "password": "nope nope nope"}
            ).status_code
            == 401
        )
    blocked = client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    # Another user from the same address is not blocked (the per-address limit is higher).
    assert (
        client.post("/api/auth/login", json={"username": "rad", "password": PASSWORD}).status_code
        == 200
    )
    with session_scope(app.extensions["neuronova"].database_url) as session:
        stored = [row.username for row in session.exec(select(LoginFailure))]
    assert stored and all(len(name) == 64 and "alice" not in name for name in stored)  # hashed


def test_a_stranger_cannot_lock_a_clinician_out_and_guessing_slows_down(app: Flask) -> None:
    """Failures count per (name, address): guesses from elsewhere lock out that address only,
    with a wait that doubles at each further failure."""
    stranger = app.test_client()
    stranger.environ_base["REMOTE_ADDR"] = "10.6.6.6"
    wrong = {"username": "alice", "password": "not her password"}
    for _ in range(3):  # login_max_failures=3 in the test settings
        assert stranger.post("/api/auth/login", json=wrong).status_code == 401
    waits = []
    for _ in range(3):
        answer = stranger.post("/api/auth/login", json=wrong)
        assert answer.status_code == 429
        waits.append(int(answer.headers["Retry-After"]))
    assert waits[1] == 2 * waits[0] and waits[2] == 2 * waits[1]
    right = {"username": "alice", "password": PASSWORD}
    assert stranger.post("/api/auth/login", json=right).status_code == 429
    # Alice, at her own desk, signs in; the stranger stays held.
    assert app.test_client().post("/api/auth/login", json=right).status_code == 200
    assert stranger.post("/api/auth/login", json=right).status_code == 429


def test_concurrent_guesses_cannot_race_past_the_limit(app: Flask) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def guess(n: int) -> int:
        client = app.test_client()
        body = {"username": "alice", "password": f"wrong guess {n:04d}"}
        return client.post("/api/auth/login", json=body).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(guess, range(10)))
    assert answers.count(401) <= 3 and answers.count(429) >= 7, answers  # login_max_failures=3


def test_a_new_password_ends_the_users_sessions(app: Flask, client: FlaskClient) -> None:
    from webapp import accounts

    tokens = login(client)
    link_token = viewer_token(client, tokens["access_token"])
    with session_scope(app.extensions["neuronova"].database_url) as session:
        accounts.set_password(session, "alice", "a brand new password")
    assert client.get("/api/studies", headers=bearer(tokens["access_token"])).status_code == 401
    assert (
        client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])).status_code == 401
    )
    assert (
        client.get(
            f"/dicom-web/studies/{STUDY_A.study}/metadata", headers=bearer(link_token)
        ).status_code
        == 401
    )


def test_taking_a_patient_off_the_care_list_closes_its_links(
    app: Flask, client: FlaskClient
) -> None:
    from webapp import accounts

    link_token = viewer_token(client, login(client)["access_token"])
    path = f"/dicom-web/studies/{STUDY_A.study}/series/{STUDY_A.series}/instances/{STUDY_A.instances[0]}"  # answered with X-Accel-Redirect (no Orthanc needed here)
    assert client.get(path, headers=bearer(link_token)).status_code == 200
    with session_scope(app.extensions["neuronova"].database_url) as session:
        accounts.revoke_patient(session, "alice", STUDY_A.patient_id)
    assert client.get(path, headers=bearer(link_token)).status_code == 401


def test_a_token_naming_another_user_than_its_session_is_refused(
    app: Flask, client: FlaskClient
) -> None:
    from flask_jwt_extended import create_access_token

    from webapp.tokens import browser_binding, issue_viewer_token
    from webapp.viewer import browser_cookie_name

    alice = login(client)
    with app.app_context():
        from flask_jwt_extended import decode_token

        sid = decode_token(alice["access_token"])["sid"]
        forged_api = create_access_token(
            identity="rad", additional_claims={"sid": sid, "role": "radiologist"}
        )
    assert client.get("/api/studies", headers=bearer(forged_api)).status_code == 401
    # Bound to this client's browser key (opened from a link of alice's): only the name is forged.
    viewer_token(client, alice["access_token"])
    browser = client.get_cookie(browser_cookie_name(app.extensions["neuronova"].settings))
    assert browser is not None
    forged_link, _ = issue_viewer_token(
        app.extensions["neuronova"].viewer_key,
        username="rad",
        study_instance_uid=STUDY_B.study,
        sid=sid,
        ttl_s=60,
        browser=browser_binding(browser.value),
    )
    assert (
        client.get(
            f"/dicom-web/studies/{STUDY_B.study}/metadata", headers=bearer(forged_link)
        ).status_code
        == 401
    )


def test_the_audit_trail_records_logins_without_secrets(app: Flask, client: FlaskClient) -> None:
    client.post("/api/auth/login", json={"username": "alice", "password": "wrong password 1"})
    client.post("/api/auth/login", json={"username": "my-password-typed-here", "password": "x"})
    tokens = login(client)
    rows = _audit(app)
    assert [(r.action, r.outcome, r.username) for r in rows] == [
        ("login", "denied", "alice"),
        ("login", "denied", None),  # an unknown name is not kept: it may be a password
        ("login", "allowed", "alice"),
    ]
    text = repr([r.model_dump() for r in rows])
    assert PASSWORD not in text and tokens["access_token"] not in text and "my-password" not in text
    assert all(r.request_id and r.client_addr for r in rows)


def test_refresh_issues_a_new_access_token_and_refuses_access_tokens(client: FlaskClient) -> None:
    tokens = login(client)
    refreshed = client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert refreshed.status_code == 200
    assert (
        client.get("/api/studies", headers=bearer(refreshed.get_json()["access_token"])).status_code
        == 200
    )
    assert (
        client.post("/api/auth/refresh", headers=bearer(tokens["access_token"])).status_code == 401
    )


def test_a_refresh_token_is_not_an_access_token(client: FlaskClient) -> None:
    tokens = login(client)
    assert client.get("/api/studies", headers=bearer(tokens["refresh_token"])).status_code == 401


def test_a_viewer_token_is_not_an_access_token(client: FlaskClient) -> None:
    token = viewer_token(client, login(client)["access_token"])
    assert client.get("/api/studies", headers=bearer(token)).status_code == 401


def test_logout_revokes_access_refresh_and_viewer_tokens(app: Flask, client: FlaskClient) -> None:
    tokens = login(client)
    link_token = viewer_token(client, tokens["access_token"])
    gate = f"/dicom-web/studies/{STUDY_A.study}/series/{STUDY_A.series}/instances/{STUDY_A.instances[0]}"
    assert client.get(gate, headers=bearer(link_token)).status_code == 200
    out = client.post(
        "/api/auth/logout",
        headers=bearer(tokens["access_token"]),
        json={"refresh_token": tokens["refresh_token"]},
    )
    assert out.status_code == 200
    assert client.get("/api/studies", headers=bearer(tokens["access_token"])).status_code == 401
    assert (
        client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])).status_code == 401
    )
    assert client.get(gate, headers=bearer(link_token)).status_code == 401
    # A second session of the same user is unaffected.
    other = login(client)
    assert client.get("/api/studies", headers=bearer(other["access_token"])).status_code == 200


def test_an_inactive_user_cannot_log_in_and_their_tokens_stop(
    app: Flask, client: FlaskClient
) -> None:
    from common.db import User

    tokens = login(client)
    with session_scope(app.extensions["neuronova"].database_url) as session:
        user = session.exec(select(User).where(User.username == "alice")).one()
        user.active = False
        session.add(user)
    assert client.get("/api/studies", headers=bearer(tokens["access_token"])).status_code == 401
    assert (
        client.post("/api/auth/login", json={"username": "alice", "password": PASSWORD}).status_code
        == 401
    )


def test_clinicians_list_only_their_patients_studies(client: FlaskClient) -> None:
    def listed(user: str) -> set[str]:
        response = client.get("/api/studies", headers=bearer(login(client, user)["access_token"]))
        return {s["study_instance_uid"] for s in response.get_json()["studies"]}

    assert listed("alice") == {STUDY_A.study}
    assert listed("rad") == {STUDY_A.study, STUDY_B.study}


def test_viewer_links_follow_the_policy(client: FlaskClient) -> None:
    alice = login(client)["access_token"]
    link = client.post(f"/api/studies/{STUDY_A.study}/viewer-link", headers=bearer(alice))
    assert link.status_code == 200
    body = link.get_json()
    url = urlparse(body["url"])
    assert (url.scheme, url.netloc, url.path) == ("https", "viewer.example.org", "/view")
    # The token only in the fragment (never sent to a server); the link lives 10 minutes.
    assert url.query == "" and len(parse_qs(url.fragment)["token"]) == 1
    expires = datetime.fromisoformat(body["expires_at"])
    assert 500 < (expires - datetime.now(UTC)).total_seconds() <= 600
    opened = client.post("/view", json={"token": parse_qs(url.fragment)["token"][0]})
    assert opened.get_json()["viewer"] == f"/viewer?StudyInstanceUIDs={STUDY_A.study}"
    expires = datetime.fromisoformat(opened.get_json()["expires_at"])
    assert 1700 < (expires - datetime.now(UTC)).total_seconds() <= 1800
    # Over TLS the browser key's cookie is Secure and host-only (`__Host-`), for the whole path.
    cookie = opened.headers["Set-Cookie"]
    assert cookie.startswith("__Host-neuronova_viewer=") and "Secure" in cookie
    assert "Domain" not in cookie and "Path=/;" in cookie
    for study in (STUDY_B.study, "1.2.3.4.5", "1.2..3"):
        assert (
            client.post(f"/api/studies/{study}/viewer-link", headers=bearer(alice)).status_code
            == 403
        )
    rad = login(client, "rad")["access_token"]
    assert (
        client.post(f"/api/studies/{STUDY_B.study}/viewer-link", headers=bearer(rad)).status_code
        == 200
    )
    assert client.post(f"/api/studies/{STUDY_A.study}/viewer-link").status_code == 401


def test_errors_never_show_library_details(client: FlaskClient) -> None:
    response = client.get("/api/studies", headers=bearer("a.b.c"))
    assert response.status_code == 401
    assert response.get_json() == {"error": "authentication required"}
