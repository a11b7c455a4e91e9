"""The Prefect UI behind the gateway: admins only, through a one-use link and a cookie that
nginx checks with the webapp before every request (webapp/admin_ui.py), closed by logout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from sqlmodel import select

from common.db import AuditEvent, session_scope
from common.settings import PROJECT_ROOT
from tests.support.viewing import PASSWORD, Viewing
from webapp import accounts

pytestmark = pytest.mark.integration

ADMIN = "ada-admin"


@pytest.fixture(scope="module")
def admin(viewing: Viewing, stack_prefect: str) -> Iterator[Viewing]:
    """An admin account, and the stack's Prefect server behind the gateway."""
    with session_scope(viewing.settings.resolved_database_url) as session:
        if accounts.find_user(session, ADMIN) is None:
            accounts.add_user(session, ADMIN, "admin", PASSWORD)
    yield viewing


def _link(client: httpx.Client, viewing: Viewing) -> tuple[str, str]:
    """Log the admin in; return (access token, Prefect UI link)."""
    access = viewing.login(client, ADMIN)["access_token"]
    response = client.post("/api/admin/prefect-link", headers={"Authorization": f"Bearer {access}"})
    assert response.status_code == 200, response.text
    return access, response.json()["url"]


def test_the_prefect_ui_and_its_api_are_closed_without_an_admin_cookie(admin: Viewing) -> None:
    with admin.client() as client:
        for path in ("/prefect/", "/prefect/api/health", "/prefect/api/flow_runs/filter"):
            assert client.get(path).status_code == 401, path
        client.cookies.set("neuronova_admin_ui", "forged", path="/prefect")
        assert client.get("/prefect/api/health").status_code == 401
        # The Prefect server is not reachable by any other path of the gateway.
        assert client.get("/ui-settings").status_code == 404


def test_only_an_admin_is_given_a_link(admin: Viewing) -> None:
    with admin.client() as client:
        access = admin.login(client, "cara")["access_token"]  # a clinician
        response = client.post(
            "/api/admin/prefect-link", headers={"Authorization": f"Bearer {access}"}
        )
        assert response.status_code == 403
        assert client.post("/api/admin/prefect-link").status_code == 401


def _spend(client: httpx.Client, url: str) -> httpx.Response:
    """What the landing page's script does: post the fragment's token."""
    link = urlparse(url)
    assert link.path == "/prefect-login" and not link.query  # the token never reaches a server
    token = link.fragment.removeprefix("token=")
    return client.post("/prefect-login", json={"token": token})


def test_an_admin_link_opens_the_ui_once_and_logout_closes_it(admin: Viewing) -> None:
    with admin.client() as client:
        access, url = _link(client, admin)
        page = client.get("/prefect-login")
        assert page.status_code == 200 and 'src="/prefect-login.js"' in page.text
        assert "fetch(" in client.get("/prefect-login.js").text
        landing = _spend(client, url)
        assert landing.status_code == 204
        set_cookie = landing.headers["set-cookie"]
        assert "Path=/prefect" in set_cookie and "HttpOnly" in set_cookie
        assert "SameSite=Strict" in set_cookie
        cookie = landing.cookies["neuronova_admin_ui"]  # the client keeps it, for /prefect only
        assert client.get("/api/health").request.headers.get("cookie") is None
        health = client.get("/prefect/api/health")
        assert health.status_code == 200 and health.json() is True  # Prefect's own answer
        page = client.get("/prefect/", follow_redirects=True)
        assert page.status_code == 200 and 'href="/prefect/' in page.text
        settings = client.get("/prefect/ui-settings").json()
        assert settings["api_url"] == f"{admin.base}/prefect/api"  # the UI calls back through us
        # Another page of this "site" (another origin) may not drive the UI with the cookie.
        other = client.get("/prefect/api/health", headers={"Sec-Fetch-Site": "same-site"})
        assert other.status_code == 403
        assert _spend(client, url).status_code == 401, "a link is good for one use"
        logout = client.post("/api/auth/logout", headers={"Authorization": f"Bearer {access}"})
        assert logout.status_code in (200, 204)
        assert client.get("/prefect/api/health").status_code == 401
    with session_scope(admin.settings.resolved_database_url) as session:
        denials = session.exec(
            select(AuditEvent).where(AuditEvent.action.in_(["admin-ui", "admin-ui-login"]))  # type: ignore[attr-defined]
        ).all()
    assert any(d.outcome == "denied" and d.reason for d in denials)
    assert all(cookie not in repr(d.model_dump()) for d in denials)
    logs = [admin.settings.stack_dir / "nginx" / n for n in ("access.log", "error.log")]
    logs.append(admin.settings.stack_dir / "webapp" / "webapp.log")
    assert all(
        cookie not in p.read_text() and url.split("=")[-1] not in p.read_text() for p in logs
    )


def test_a_link_of_another_kind_or_after_a_role_change_opens_nothing(admin: Viewing) -> None:
    with admin.client() as client:
        viewer_link = admin.link(client, admin.login(client, "cara")["access_token"])
        viewer_token = viewer_link.split("token=")[-1]
        assert client.post("/prefect-login", json={"token": viewer_token}).status_code == 401
        _, url = _link(client, admin)
        with session_scope(admin.settings.resolved_database_url) as session:
            user = accounts.find_user(session, ADMIN)
            assert user is not None
            user.role = "radiologist"
            session.add(user)
        try:
            assert _spend(client, url).status_code == 401  # no longer an admin
        finally:
            with session_scope(admin.settings.resolved_database_url) as session:
                user = accounts.find_user(session, ADMIN)
                assert user is not None
                user.role = "admin"
                session.add(user)


def test_an_admin_sees_the_prefect_ui_in_a_browser(admin: Viewing, browser: object) -> None:
    with admin.client() as client:
        _, url = _link(client, admin)
    page = browser.new_page()  # type: ignore[attr-defined]
    api_answers: list[int] = []
    page.on(
        "response",
        lambda r: api_answers.append(r.status) if "/prefect/api/" in r.url else None,
    )
    try:
        page.goto(url)
        page.wait_for_url("**/prefect/**", timeout=30_000)
        page.wait_for_function("document.title.includes('Prefect')", timeout=60_000)
        page.wait_for_timeout(2000)  # the dashboard's first API calls
        shot = Path(PROJECT_ROOT / "test-artifacts" / "prefect-ui-behind-gateway.png")
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot))
    finally:
        page.close()
    assert api_answers and all(status < 400 for status in api_answers), api_answers
