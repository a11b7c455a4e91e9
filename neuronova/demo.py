"""The demo's accounts: a clinician with the sample patient on its care list and a viewer link,
and an admin with a one-use link into the Prefect UI.

Passwords are generated once and kept in `var/secrets/` (0600), so `make demo` can be run
again and the accounts can be used by hand; links are obtained the way a portal would, by
logging in through the gateway and asking for them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import httpx

from common.db import session_scope
from common.settings import Settings
from neuronova.sample import SAMPLE_PATIENT_ID
from webapp import accounts

if TYPE_CHECKING:  # the flow imports Prefect, which must wait for the stack's API URL
    from flows.ingest_study import IngestReport

DEMO_CLINICIAN = "demo-clinician"
DEMO_ADMIN = "demo-admin"  # may open the Prefect UI behind the gateway


def demo_password(settings: Settings, username: str = DEMO_CLINICIAN) -> str:
    """A demo account's password, generated on first use."""
    return settings.generated_secret(f"{username}.password", lambda: secrets.token_urlsafe(18))


def _ensure_account(settings: Settings, username: str, role: str) -> str:
    """Create the demo account, or give it its kept password again; returns the password."""
    if settings.environment == "production":
        raise RuntimeError("the demo accounts are not created in production")
    password = demo_password(settings, username)
    with session_scope(settings.resolved_database_url) as session:
        if accounts.find_user(session, username) is None:
            accounts.add_user(session, username, role, password)
        else:
            accounts.set_password(session, username, password)
    return password


def ensure_demo_clinician(settings: Settings) -> str:
    """Create (or re-key) the demo clinician with the sample patient on its care list."""
    password = _ensure_account(settings, DEMO_CLINICIAN, "clinician")
    with session_scope(settings.resolved_database_url) as session:
        accounts.grant_patient(session, DEMO_CLINICIAN, SAMPLE_PATIENT_ID)
    return password


def ensure_demo_admin(settings: Settings) -> str:
    """Create (or re-key) the demo's admin, who may open the Prefect UI behind the gateway."""
    return _ensure_account(settings, DEMO_ADMIN, "admin")


def _link_for(gateway_url: str, username: str, password: str, path: str) -> str:
    """Log in through the gateway and POST `path` for a link, as a portal would."""
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        login = client.post("/api/auth/login", json={"username": username, "password": password})
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        link = client.post(path, headers=headers)
        link.raise_for_status()
        url: str = link.json()["url"]
        return url


def prefect_ui_link(gateway_url: str, username: str, password: str) -> str:
    """A one-use link into the Prefect UI, for an admin."""
    return _link_for(gateway_url, username, password, "/api/admin/prefect-link")


def viewer_link(gateway_url: str, username: str, password: str, study_uid: str) -> str:
    """A viewer link to one study, for a user allowed to see it."""
    return _link_for(gateway_url, username, password, f"/api/studies/{study_uid}/viewer-link")


def open_viewer_link(link_url: str) -> tuple[str, str]:
    """Open a viewer link as its landing page does (`POST /view` with the fragment's token),
    for a script or a benchmark that reads through the gate without a browser. Returns the
    viewer token and the `Cookie` header value it is bound to (both are needed)."""
    parts = urlsplit(link_url)
    link_token = parse_qs(parts.fragment).get("token", [""])[0]
    with httpx.Client(base_url=f"{parts.scheme}://{parts.netloc}", timeout=30) as client:
        opened = client.post("/view", json={"token": link_token})
        opened.raise_for_status()
        token: str = opened.json()["token"]
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    return token, cookie


def register_for_workers(settings: Settings) -> None:
    """The work pools and deployments on the stack's Prefect server (what `make deploy` does)."""
    from deployments.work_pools import register_deployments

    register_deployments(settings)


def ingest_on_worker(settings: Settings, folder: Path) -> tuple[UUID, IngestReport | None]:
    """Trigger `ingest_study/on-demand` for `folder` and wait for the cpu worker to run it (its
    hand-offs go on to their own pools). Returns the flow run id and its report, None when the
    run did not complete."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync outside a flow
        "ingest_study/on-demand",
        parameters={"path": str(folder.resolve())},
        # Longer than ingest's own wait for its hand-off, so that ingest reports first.
        timeout=settings.handoff_timeout_s + 600,
    )
    if run.state is None or not run.state.is_completed():
        return run.id, None
    report: IngestReport = run.state.result()
    return run.id, report
