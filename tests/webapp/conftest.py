"""A webapp on its own SQLite database, with two users and two indexed studies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from common.db import session_scope
from common.settings import Settings
from tests.support.web import PASSWORD, STUDY_A, STUDY_B, index_study
from webapp import accounts, create_app


@pytest.fixture
def web_settings(tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'nn.db'}",
        jwt_secret=SecretStr("t" * 48),
        gateway_url="https://viewer.example.org",
        login_max_failures=3,
    )


@pytest.fixture
def app(web_settings: Settings) -> Iterator[Flask]:
    app = create_app(web_settings)
    url = web_settings.resolved_database_url
    with session_scope(url) as session:
        accounts.add_user(session, "alice", "clinician", PASSWORD)
        accounts.add_user(session, "rad", "radiologist", PASSWORD)
    with session_scope(url) as session:
        accounts.grant_patient(session, "alice", STUDY_A.patient_id)
    index_study(url, STUDY_A)
    index_study(url, STUDY_B)
    yield app
    app.extensions["neuronova"].audit.flush()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
