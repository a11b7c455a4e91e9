"""The webapp unit tests' world: two indexed studies of two patients (built by the `app` fixture
in tests/webapp/conftest.py, on its own SQLite database), and how a test logs in and takes the
token out of a viewer link."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from pydicom.uid import generate_uid

from common.db import InferenceFinding, InferenceResult, Instance, Series, Study, session_scope

PASSWORD = "correct horse battery staple"
ORIGIN = "https://viewer.example.org"  # the unit tests' gateway (https)


@dataclass(frozen=True)
class IndexedStudy:
    patient_id: str
    study: str
    series: str
    instances: tuple[str, ...]


STUDY_A = IndexedStudy(
    "MRN-A",
    "1.2.826.0.1.1001",
    "1.2.826.0.1.1001.1",
    ("1.2.826.0.1.1001.1.1", "1.2.826.0.1.1001.1.2"),
)
STUDY_B = IndexedStudy("MRN-B", "1.2.826.0.1.2002", "1.2.826.0.1.2002.1", ("1.2.826.0.1.2002.1.1",))


def index_study(url: str, study: IndexedStudy) -> None:
    """Rows as ingest writes them (the Orthanc IDs are made-up but well-formed)."""
    with session_scope(url) as session:
        session.add(
            Study(study_instance_uid=study.study, patient_id=study.patient_id, modalities="MR")
        )
        session.flush()  # no ORM relationships: parents first, for the foreign keys
        session.add(
            Series(series_instance_uid=study.series, study_instance_uid=study.study, modality="MR")
        )
        session.flush()
        for n, sop in enumerate(study.instances):
            session.add(
                Instance(
                    sop_instance_uid=sop,
                    series_instance_uid=study.series,
                    study_instance_uid=study.study,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    orthanc_id=f"{n:08x}-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd",
                    transfer_syntax="1.2.840.10008.1.2.4.201",
                    source_transfer_syntax="1.2.840.10008.1.2.1",
                    action="transcoded",
                    lossless=True,
                    stored_sha256="0" * 64,
                    bytes_in=1,
                    bytes_stored=1,
                )
            )


@dataclass(frozen=True)
class Finding:
    """One lesion of a recorded reading."""

    tracking_uid: str
    volume_ml: float
    key_sop_instance_uid: str | None = None
    fhir_observation_id: str | None = None


def record_reading(
    url: str,
    study: str,
    series: str,
    patient_id: str,
    findings: Sequence[Finding] = (),
    **fields: Any,
) -> int:
    """A completed AI reading of `series`, with its findings ("Lesion 1" … in order), as
    run_inference records it; `fields` override the reading's columns. Returns its id."""
    values: dict[str, Any] = {
        "model_name": "brain-lesion",
        "model_version": "1",
        "model_sha256": "0" * 64,
        "status": "completed",
        "device": "cpu",
        "lesion_count": len(findings),
        "lesion_volume_ml": round(sum(f.volume_ml for f in findings), 3),
        "seg_series_uid": generate_uid(),
        "seg_sop_instance_uid": generate_uid(),
        "timings": "{}",
    } | fields
    with session_scope(url) as session:
        reading = InferenceResult(
            study_instance_uid=study, series_instance_uid=series, patient_id=patient_id, **values
        )
        session.add(reading)
        session.flush()
        assert reading.id is not None
        for number, finding in enumerate(findings, 1):
            session.add(
                InferenceFinding(
                    result_id=reading.id,
                    number=number,
                    label=f"Lesion {number}",
                    **finding.__dict__,
                )
            )
        return reading.id


def add_reading(url: str, study: IndexedStudy, lesions: int, volume_ml: float) -> None:
    """A completed AI reading of the study's series (counts only, no findings)."""
    record_reading(
        url,
        study.study,
        study.series,
        study.patient_id,
        lesion_count=lesions,
        lesion_volume_ml=volume_ml,
        seg_series_uid=study.series + ".9",
        seg_sop_instance_uid=study.series + ".9.1",
    )


def login(client: FlaskClient, username: str = "alice", password: str = PASSWORD) -> dict[str, str]:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.get_json()
    tokens: dict[str, str] = response.get_json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def viewer_link_token(client: FlaskClient, access: str, study: str = STUDY_A.study) -> str:
    """The one-use token in a viewer link's fragment."""
    response = client.post(f"/api/studies/{study}/viewer-link", headers=bearer(access))
    assert response.status_code == 200, response.get_json()
    return fragment_token(response.get_json()["url"])


def viewer_token(client: FlaskClient, access: str, study: str = STUDY_A.study) -> str:
    """A viewer token as the link's page gets it: the link spent by `POST /view` from this
    client, whose cookie jar now holds the browser key the token is bound to."""
    response = client.post("/view", json={"token": viewer_link_token(client, access, study)})
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["token"]
    return token


def fragment_token(url: str) -> str:
    """The `token` in a link's fragment (`…/view#token=…`)."""
    from urllib.parse import parse_qs, urlparse

    return parse_qs(urlparse(url).fragment)["token"][0]


def csrf_of(html: str) -> str:
    """The CSRF token a page's form carries."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the form carries no CSRF token"
    return found.group(1)


def sign_in(client: FlaskClient, username: str = "alice", password: str = PASSWORD) -> str:
    """Sign in through the form as a browser does; returns the worklist's CSRF token."""
    form = client.get("/")
    answer = client.post(
        "/",
        data={"csrf": csrf_of(form.text), "username": username, "password": password},
        headers={"Origin": ORIGIN},
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/worklist", answer.text
    page = client.get("/worklist")
    assert page.status_code == 200
    return csrf_of(page.text)
