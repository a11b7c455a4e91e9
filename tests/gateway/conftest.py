"""Two ingested studies of two patients, a clinician allowed one of them, and a radiologist.

Everything goes through the real stack: ingest into the real Orthanc, users in MariaDB, and
HTTP through nginx to the gunicorn webapp and back through nginx's internal location.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.db import session_scope
from common.settings import Settings
from neuronova.sample import write_sample_study
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.viewing import PASSWORD, Viewing, write_study_b
from webapp import accounts


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
    write_study_b(folder_b)
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
