"""The demo's accounts: a clinician with the sample patient on its care list and a viewer link,
a radiologist whose worklist holds the AI reading awaiting review, and an admin with a one-use
link into the Prefect UI; and the sample study sent the way a
modality sends it (C-STORE), then awaited until the AI has read it.

Passwords are generated once and kept in `var/secrets/` (0600), so `make demo` can be run
again and the accounts can be used by hand; links are obtained the way a portal would, by
logging in through the gateway and asking for them.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlmodel import select

from common.db import ArrivalState, InferenceResult, StudyArrival, session_scope
from common.errors import StackError
from common.settings import Settings
from neuronova.sample import SAMPLE_PATIENT_ID
from webapp import accounts

DEMO_CLINICIAN = "demo-clinician"
DEMO_ADMIN = "demo-admin"  # may open the Prefect UI behind the gateway
DEMO_RADIOLOGIST = "demo-radiologist"  # reviews the AI's readings (accept, reject)


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


def ensure_demo_radiologist(settings: Settings) -> str:
    """Create (or re-key) the demo radiologist, who gives verdicts on the AI's readings."""
    return _ensure_account(settings, DEMO_RADIOLOGIST, "radiologist")


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


def send_by_cstore(settings: Settings, files: list[Path]) -> None:
    """Push files to the stack's Orthanc over DICOM, as a modality does (dcmtk's `storescu`,
    as the first allowed modality on this machine: NEURONOVA_DICOM_MODALITIES)."""
    local = [m for m in settings.dicom_modalities if m.host in ("127.0.0.1", "localhost", "::1")]
    if not local:
        raise StackError(
            "no modality on this machine may send to Orthanc: add one to "
            'NEURONOVA_DICOM_MODALITIES, e.g. [{"aet": "STORESCU", "host": "127.0.0.1"}]'
        )
    command = [
        "storescu",
        "-aet",
        local[0].aet,
        "-aec",
        settings.orthanc_aet,
        "127.0.0.1",
        str(settings.orthanc_dicom_port),
        *map(str, files),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise StackError(f"storescu failed: {(result.stdout + result.stderr)[-1000:]}")


def wait_for_reading(
    settings: Settings, study_uid: str, timeout_s: float
) -> tuple[list[StudyArrival], InferenceResult | None]:
    """Until the study has arrived (no arrival of it pending or running) and the AI's reading
    of it is complete; the study's arrivals and that reading (None at timeout)."""
    from tasks.archive.orthanc import OrthancClient

    deadline = time.monotonic() + timeout_s
    url = settings.resolved_database_url
    with OrthancClient.from_settings(settings) as client:
        while True:
            orthanc_id = client.lookup(study_uid, "Study")
            with session_scope(url) as session:
                arrivals = list(
                    session.exec(
                        select(StudyArrival).where(StudyArrival.orthanc_study_id == orthanc_id)
                    )
                )
                reading = session.exec(
                    select(InferenceResult)
                    .where(InferenceResult.study_instance_uid == study_uid)
                    .where(InferenceResult.status == "completed")
                ).first()
            busy = [
                a for a in arrivals if a.state in (ArrivalState.PENDING, ArrivalState.SUBMITTED)
            ]
            if reading is not None and arrivals and not busy:
                return arrivals, reading
            if time.monotonic() > deadline:
                return arrivals, None
            time.sleep(1)
