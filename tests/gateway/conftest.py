"""Two ingested studies of two patients, a clinician allowed one of them, and a radiologist.

Everything goes through the real stack: ingest into the real Orthanc, users in MariaDB, and
HTTP through nginx to the gunicorn webapp and back through nginx's internal location.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from common.db import session_scope
from common.settings import Settings
from neuronova.sample import ct_slice_dataset, head_phantom, write_sample_study
from tests.gateway.browser_tools import CHROMIUM, CHROMIUM_ARGS
from webapp import accounts

PASSWORD = "gateway test password"


@dataclass(frozen=True)
class Viewing:
    settings: Settings
    base: str
    study_a: str
    series_a: str
    instances_a: tuple[str, ...]
    patient_a: str
    study_b: str
    series_b: str
    instances_b: tuple[str, ...]
    folder_a: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def login(self, client: httpx.Client, username: str = "cara") -> dict[str, str]:
        response = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        tokens: dict[str, str] = response.json()
        return tokens

    def link(self, client: httpx.Client, access: str, study: str | None = None) -> str:
        response = client.post(
            f"/api/studies/{study or self.study_a}/viewer-link",
            headers={"Authorization": f"Bearer {access}"},
        )
        assert response.status_code == 200, response.text
        url: str = response.json()["url"]
        return url


def token_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["token"][0]


def _write_study_b(folder: Path) -> None:
    """A second patient's small study (other UIDs, other PatientID)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = "1.2.826.0.1.3680043.10.1245.999"
    for index in range(3):
        ds = ct_slice_dataset(
            head_phantom(64, 64, 0.1 * index), index, f"{root}.1", f"{root}.1.1", f"{root}.9"
        )
        ds.PatientID = "NN-TEST-B"
        ds.PatientName = "Test^B"
        ds.save_as(folder / f"B{index}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, driven by Playwright (the viewer and admin UI tests)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: run `make system`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def viewing(
    gateway: Settings, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Viewing:
    from flows.ingest_study import ingest_study

    folder_a = tmp_path_factory.mktemp("study-a")
    write_sample_study(folder_a, slices=12)
    folder_b = tmp_path_factory.mktemp("study-b")
    _write_study_b(folder_b)
    studies = []
    for folder in (folder_a, folder_b):
        report = ingest_study(str(folder))
        assert report["counts"]["quarantined"] == 0
        (study,) = report["studies"]
        (series,) = study["series"]
        studies.append((study["study_instance_uid"], series["series_instance_uid"]))
    url = gateway.resolved_database_url
    with session_scope(url) as session:
        for name, role in (("cara", "clinician"), ("rex", "radiologist")):
            if accounts.find_user(session, name) is None:
                accounts.add_user(session, name, role, PASSWORD)
    with session_scope(url) as session:
        accounts.grant_patient(session, "cara", "NN-DEMO-0001")
    from sqlmodel import select

    from common.db import Instance

    def instances(study: str) -> tuple[str, ...]:
        with session_scope(url) as session:
            rows = session.exec(
                select(Instance.sop_instance_uid).where(Instance.study_instance_uid == study)
            )
            return tuple(sorted(rows))

    (study_a, series_a), (study_b, series_b) = studies
    return Viewing(
        settings=gateway,
        base=gateway.gateway_url,
        study_a=study_a,
        series_a=series_a,
        instances_a=instances(study_a),
        patient_a="NN-DEMO-0001",
        study_b=study_b,
        series_b=series_b,
        instances_b=instances(study_b),
        folder_a=folder_a,
    )
