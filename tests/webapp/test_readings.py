"""A reader's verdict on an AI reading (IHE AIRA), through the API and the review panel, against
the real FHIR server: who may give one, what is refused, what FHIR holds after each verdict
(statuses, the reader, a Provenance), and a FHIR that is down (the update is owed, then sent)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr
from sqlmodel import select

from common.db import (
    AuditEvent,
    InferenceResult,
    ReadingVerdict,
    Study,
    session_scope,
)
from common.settings import Settings
from tasks.inference.report import LesionFinding, LesionFindings, publish_lesion_results
from tasks.inference.verdict_fhir import send_owed_verdicts
from tasks.patients.fhir import FhirClient
from tests.support.web import (
    PASSWORD,
    STUDY_A,
    STUDY_B,
    Finding,
    bearer,
    index_study,
    login,
    record_reading,
    sign_in,
)
from webapp import accounts, create_app

pytestmark = pytest.mark.integration

TRACKING = ("1.2.826.0.1.1001.77.1", "1.2.826.0.1.1001.77.2")
REASON = "a vessel seen end-on, not a lesion"


@dataclass(frozen=True)
class World:
    app: Flask
    settings: Settings
    reading_id: int
    report_id: str
    observations: dict[str, str]  # tracking UID → Observation id


def _fhir_patient(fhir: FhirClient, mrn: str) -> str:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": "Review", "given": ["Test"]}],
    }
    stored, _ = fhir.conditional_create(patient, system="urn:test:mrn", value=mrn)
    return str(stored["id"])


@pytest.fixture
def world(tmp_path: Path, patient_sources: Settings) -> Iterator[World]:
    """STUDY_A read by the model (two lesions), its report in the real FHIR server as
    run_inference writes it; alice (clinician, STUDY_A on her care list), rad and rad2."""
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'nn.db'}",
        jwt_secret=SecretStr("t" * 48),
        gateway_url="https://viewer.example.org",
        fhir_url=patient_sources.fhir_url,
    )
    app = create_app(settings)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        accounts.add_user(session, "alice", "clinician", PASSWORD)
        accounts.add_user(session, "rad", "radiologist", PASSWORD)
        accounts.add_user(session, "rad2", "radiologist", PASSWORD)
        accounts.add_user(session, "admin", "admin", PASSWORD)
    with session_scope(url) as session:
        accounts.grant_patient(session, "alice", STUDY_A.patient_id)
    index_study(url, STUDY_A)
    index_study(url, STUDY_B)
    version = f"test-{tmp_path.name}"  # a reading of its own in the shared FHIR server
    with FhirClient.from_settings(settings) as fhir:
        patient = _fhir_patient(fhir, STUDY_A.patient_id)
        published = publish_lesion_results(
            fhir,
            LesionFindings(
                f"Patient/{patient}",
                STUDY_A.study,
                STUDY_A.series,
                "brain-lesion",
                version,
                lesion_count=2,
                volume_ml=5.5,
                lesions=(
                    LesionFinding(1, TRACKING[0], "Lesion 1", 4.25),
                    LesionFinding(2, TRACKING[1], "Lesion 2", 1.25),
                ),
            ),
            "ab" * 32,
        )
    reading_id = record_reading(
        url,
        STUDY_A.study,
        STUDY_A.series,
        STUDY_A.patient_id,
        [
            Finding(uid, volume, sop, published.lesion_observation_ids[uid])
            for uid, volume, sop in zip(TRACKING, (4.25, 1.25), STUDY_A.instances, strict=True)
        ],
        model_version=version,
        model_sha256="ab" * 32,
        fhir_report_id=published.report_id,
    )
    yield World(app, settings, reading_id, published.report_id, published.lesion_observation_ids)
    app.extensions["neuronova"].audit.flush()


def _token(world: World, username: str) -> dict[str, str]:
    return bearer(login(world.app.test_client(), username)["access_token"])


def _verdict_url(world: World, study: str = STUDY_A.study, reading: int | None = None) -> str:
    return f"/api/studies/{study}/readings/{reading or world.reading_id}/verdict"


def _fhir(world: World, path: str) -> dict[str, Any]:
    answer = requests.get(f"{world.settings.fhir_url}/{path}", timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def _audited(world: World, status: int) -> list[AuditEvent]:
    world.app.extensions["neuronova"].audit.flush()
    with session_scope(world.settings.resolved_database_url) as session:
        return list(
            session.exec(
                select(AuditEvent).where(
                    AuditEvent.action == "ai-verdict", AuditEvent.status == status
                )
            )
        )


def test_anyone_who_may_open_the_study_sees_its_findings_and_no_one_else(world: World) -> None:
    client = world.app.test_client()
    answer = client.get(f"/api/studies/{STUDY_A.study}/readings", headers=_token(world, "alice"))
    assert answer.status_code == 200
    (reading,) = answer.get_json()["readings"]
    assert reading["id"] == world.reading_id and reading["verdict"] is None
    assert [f["label"] for f in reading["findings"]] == ["Lesion 1", "Lesion 2"]
    assert [f["tracking_uid"] for f in reading["findings"]] == list(TRACKING)
    assert reading["findings"][0]["key_sop_instance_uid"] == STUDY_A.instances[0]
    assert all(f["verdict"] is None for f in reading["findings"])
    refused = client.get(f"/api/studies/{STUDY_B.study}/readings", headers=_token(world, "alice"))
    assert refused.status_code == 403  # not on her care list: the same as an unknown study


def test_clinicians_and_admins_cannot_judge_and_are_audited(world: World) -> None:
    client = world.app.test_client()
    for user in ("alice", "admin"):
        answer = client.post(
            _verdict_url(world), json={"verdict": "accepted"}, headers=_token(world, user)
        )
        assert answer.status_code == 403, user
    assert {e.username for e in _audited(world, 403)} == {"alice", "admin"}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"verdict": "maybe"}, 400, "verdict must be one of"),
        ({"verdict": "rejected"}, 400, "reason is required"),
        ({"verdict": "rejected", "reason": "too short"}, 400, "10 to 500"),
        ({"verdict": "rejected", "reason": "x" * 501}, 400, "10 to 500"),
        ({"verdict": "corrected"}, 400, "corrected_seg"),
        ({"verdict": "accepted", "finding": "1.2.3.4"}, 404, "no such finding"),
        ({"verdict": "accepted", "finding": "not a uid"}, 400, "Tracking UID"),
        ([], 400, "JSON object"),
    ],
)
def test_a_bad_verdict_is_refused_with_its_reason(
    world: World, body: Any, status: int, words: str
) -> None:
    answer = world.app.test_client().post(
        _verdict_url(world), json=body, headers=_token(world, "rad")
    )
    assert answer.status_code == status and words in answer.get_json()["error"]
    with session_scope(world.settings.resolved_database_url) as session:
        assert not session.exec(select(ReadingVerdict)).all()


def test_an_unknown_reading_or_another_studys_reading_is_404(world: World) -> None:
    client = world.app.test_client()
    rad = _token(world, "rad")
    body = {"verdict": "accepted"}
    assert client.post(_verdict_url(world, reading=999), json=body, headers=rad).status_code == 404
    other = client.post(_verdict_url(world, study=STUDY_B.study), json=body, headers=rad)
    assert other.status_code == 404


def test_a_reading_still_being_made_is_409(world: World) -> None:
    with session_scope(world.settings.resolved_database_url) as session:
        reading = session.get(InferenceResult, world.reading_id)
        study = session.get(Study, STUDY_A.study)
        assert reading is not None and study is not None
        reading.status, study.ai_state = "segmented", "running"
        session.add_all([reading, study])
    answer = world.app.test_client().post(
        _verdict_url(world), json={"verdict": "accepted"}, headers=_token(world, "rad")
    )
    assert answer.status_code == 409 and "still reading" in answer.get_json()["error"]


def test_accepting_the_reading_makes_the_report_final_by_the_reader(world: World) -> None:
    answer = world.app.test_client().post(
        _verdict_url(world), json={"verdict": "accepted"}, headers=_token(world, "rad")
    )
    assert answer.status_code == 200, answer.get_json()
    reading = answer.get_json()
    assert reading["verdict"]["verdict"] == "accepted" and reading["verdict"]["by"] == "rad"
    assert reading["fhir_owed"] is False
    report = _fhir(world, f"DiagnosticReport/{world.report_id}")
    assert report["status"] == "final"
    (interpreter,) = report["resultsInterpreter"]
    practitioner = _fhir(world, interpreter["reference"])
    assert practitioner["identifier"] == [{"system": "urn:neuronova:user", "value": "rad"}]
    assert "Reader's verdict: Accepted by rad" in report["conclusion"]
    assert "not for clinical use" in report["conclusion"]  # the AI's own words stay
    for result in report["result"]:
        assert _fhir(world, result["reference"])["status"] == "final"
    with session_scope(world.settings.resolved_database_url) as session:
        (row,) = session.exec(select(ReadingVerdict)).all()
    provenance = _fhir(world, f"Provenance/nn-verdict-{row.uid}")
    assert provenance["target"] == [{"reference": f"DiagnosticReport/{world.report_id}"}]
    assert provenance["agent"][0]["who"]["reference"] == interpreter["reference"]
    assert provenance["agent"][0]["type"]["coding"][0]["code"] == "verifier"
    assert row.fhir_sent_at is not None
    (audited,) = _audited(world, 200)
    assert audited.username == "rad" and audited.patient_id == STUDY_A.patient_id


def test_a_rejected_finding_is_entered_in_error_and_the_rest_follow_the_reading(
    world: World,
) -> None:
    client = world.app.test_client()
    rad = _token(world, "rad")
    client.post(_verdict_url(world), json={"verdict": "accepted"}, headers=rad)
    body = {"verdict": "rejected", "finding": TRACKING[1], "reason": REASON}
    answer = client.post(_verdict_url(world), json=body, headers=rad)
    assert answer.status_code == 200
    findings = answer.get_json()["findings"]
    assert findings[0]["verdict"] is None
    assert findings[1]["verdict"]["verdict"] == "rejected"
    assert findings[1]["verdict"]["reason"] == REASON
    second = _fhir(world, f"Observation/{world.observations[TRACKING[1]]}")
    first = _fhir(world, f"Observation/{world.observations[TRACKING[0]]}")
    assert (first["status"], second["status"]) == ("final", "entered-in-error")
    report = _fhir(world, f"DiagnosticReport/{world.report_id}")
    assert report["status"] == "final"
    assert "Lesion 2 rejected by rad" in report["conclusion"] and REASON in report["conclusion"]
    with session_scope(world.settings.resolved_database_url) as session:
        row = session.exec(
            select(ReadingVerdict).where(ReadingVerdict.finding_tracking_uid == TRACKING[1])
        ).one()
    provenance = _fhir(world, f"Provenance/nn-verdict-{row.uid}")
    assert provenance["target"] == [{"reference": f"Observation/{second['id']}"}]
    assert REASON in provenance["reason"][0]["text"]


def test_a_later_verdict_supersedes_and_both_stay_on_record(world: World) -> None:
    """Two readers posting at once: both recorded, the later one current (and in FHIR)."""
    tokens = {name: _token(world, name) for name in ("rad", "rad2")}
    bodies = {
        "rad": {"verdict": "accepted"},
        "rad2": {"verdict": "rejected", "reason": "motion artefact, not lesions"},
    }
    start = threading.Barrier(2)
    answers: dict[str, int] = {}

    def post(name: str) -> None:
        client: FlaskClient = world.app.test_client()
        start.wait()
        answers[name] = client.post(
            _verdict_url(world), json=bodies[name], headers=tokens[name]
        ).status_code

    threads = [threading.Thread(target=post, args=(name,)) for name in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == {"rad": 200, "rad2": 200}
    with session_scope(world.settings.resolved_database_url) as session:
        rows = session.exec(select(ReadingVerdict).order_by(ReadingVerdict.id)).all()  # type: ignore[arg-type]
    assert len(rows) == 2
    later = rows[-1]
    current = world.app.test_client().get(
        f"/api/studies/{STUDY_A.study}/readings", headers=tokens["rad"]
    )
    assert current.get_json()["readings"][0]["verdict"]["by"] == later.username
    report = _fhir(world, f"DiagnosticReport/{world.report_id}")
    assert report["status"] == {"accepted": "final", "rejected": "entered-in-error"}[later.verdict]


def _fail_next_fhir_calls(world: World, count: int) -> None:
    root = re.sub(r"/fhir/R4/?$", "", world.settings.fhir_url)
    requests.post(f"{root}/_faults", json={"fail_next": [503] * count}, timeout=10)


def test_fhir_down_during_a_verdict_keeps_it_and_sends_it_later(world: World) -> None:
    _fail_next_fhir_calls(world, 1)
    answer = world.app.test_client().post(
        _verdict_url(world), json={"verdict": "accepted"}, headers=_token(world, "rad")
    )
    assert answer.status_code == 200
    assert answer.get_json()["fhir_owed"] is True  # recorded here; FHIR's part waits
    assert _fhir(world, f"DiagnosticReport/{world.report_id}")["status"] == "preliminary"
    with session_scope(world.settings.resolved_database_url) as session:
        (row,) = session.exec(select(ReadingVerdict)).all()
    assert row.fhir_sent_at is None and row.fhir_note and "FHIR did not take it" in row.fhir_note
    sent = send_owed_verdicts(world.settings)  # what the verdicts/owed deployment runs
    assert (sent.sent, sent.owed) == (1, 0)
    assert _fhir(world, f"DiagnosticReport/{world.report_id}")["status"] == "final"
    assert _fhir(world, f"Provenance/nn-verdict-{row.uid}")["resourceType"] == "Provenance"
    assert send_owed_verdicts(world.settings).sent == 0  # nothing left, nothing sent twice


# --------------------------------------------------------------------------- the review panel


def test_the_worklist_says_awaiting_review_then_who_decided_and_filters(world: World) -> None:
    client = world.app.test_client()
    sign_in(client, "rad")
    row = _row_text(client.get("/worklist").text, STUDY_A.study)
    assert "2 lesions, 5.5 mL" in row and "awaiting review" in row
    awaiting = client.get("/worklist?review=awaiting").text
    assert STUDY_A.study in awaiting and STUDY_B.study not in awaiting  # B has no reading
    world.app.test_client().post(
        _verdict_url(world), json={"verdict": "accepted"}, headers=_token(world, "rad2")
    )
    assert "accepted by rad2" in _row_text(client.get("/worklist").text, STUDY_A.study)
    assert STUDY_A.study not in client.get("/worklist?review=awaiting").text


def _row_text(html: str, study: str) -> str:
    found = re.search(rf'<tr data-study="{re.escape(study)}">(.*?)</tr>', html, re.S)
    assert found, f"no row for {study}"
    return re.sub(r"<[^>]+>", " ", found.group(1))


def test_a_radiologist_rejects_a_finding_on_the_panel_with_a_reason(world: World) -> None:
    client = world.app.test_client()
    csrf = sign_in(client, "rad")
    panel = client.get(f"/worklist/review?study={STUDY_A.study}")
    assert panel.status_code == 200 and "Lesion 2" in panel.text and "4.25 mL" in panel.text
    form = {
        "csrf": csrf,
        "study": STUDY_A.study,
        "reading": str(world.reading_id),
        "finding": TRACKING[1],
        "verdict": "rejected",
    }
    short = client.post("/worklist/review/verdict", data=form | {"reason": "no"})
    assert short.status_code == 400 and "10 to 500" in short.text  # the panel, with the error
    done = client.post("/worklist/review/verdict", data=form | {"reason": REASON})
    assert done.status_code == 303
    assert done.headers["Location"].endswith(f"#reading-{world.reading_id}")
    shown = client.get(f"/worklist/review?study={STUDY_A.study}").text
    assert "Rejected" in shown and REASON in shown
    observation = _fhir(world, f"Observation/{world.observations[TRACKING[1]]}")
    assert observation["status"] == "entered-in-error"


def test_a_clinician_sees_the_panel_without_the_forms_and_cannot_post(world: World) -> None:
    client = world.app.test_client()
    csrf = sign_in(client, "alice")
    panel = client.get(f"/worklist/review?study={STUDY_A.study}").text
    assert "Lesion 1" in panel and "Open on this lesion" in panel
    assert "/worklist/review/verdict" not in panel
    refused = client.post(
        "/worklist/review/verdict",
        data={
            "csrf": csrf,
            "study": STUDY_A.study,
            "reading": str(world.reading_id),
            "verdict": "accepted",
        },
    )
    assert refused.status_code == 403
    assert client.get(f"/worklist/review?study={STUDY_B.study}").status_code == 403
    assert [e.username for e in _audited(world, 403)] == ["alice"]


def test_open_on_this_lesion_opens_the_viewer_on_its_key_slice(world: World) -> None:
    client = world.app.test_client()
    csrf = sign_in(client, "alice")
    opened = client.post(
        "/worklist/open",
        data={"csrf": csrf, "study": STUDY_A.study, "sop": STUDY_A.instances[1]},
    )
    assert opened.status_code == 303
    fragment = parse_qs(urlsplit(opened.headers["Location"]).fragment)
    assert fragment["sop"] == [STUDY_A.instances[1]]
    spent = client.post("/view", json={"token": fragment["token"][0], "sop": fragment["sop"][0]})
    viewer = parse_qs(urlsplit(spent.get_json()["viewer"]).query)
    assert viewer["initialSOPInstanceUID"] == [STUDY_A.instances[1]]
    # A slice of another study is no place to open this one: the default key image instead.
    other = client.post(
        "/worklist/open",
        data={"csrf": csrf, "study": STUDY_A.study, "sop": STUDY_B.instances[0]},
    )
    token = parse_qs(urlsplit(other.headers["Location"]).fragment)["token"][0]
    spent = client.post("/view", json={"token": token, "sop": STUDY_B.instances[0]})
    viewer = parse_qs(urlsplit(spent.get_json()["viewer"]).query)
    assert viewer.get("initialSOPInstanceUID") != [STUDY_B.instances[0]]


def test_a_corrected_reading_carries_the_readers_volumes_into_fhir(world: World) -> None:
    """What the viewer's save does after storing the reader's SEG (tests/gateway/
    test_corrections.py): the verdict `corrected` with the volumes the SEG measures."""
    import json

    from common.db import Instance, Verdict, session_scope
    from tasks.inference.verdicts import VerdictRequest
    from webapp.readings import judge

    seg_uid = STUDY_A.series + ".301.1"
    with session_scope(world.settings.resolved_database_url) as session:
        session.add(
            Instance(
                sop_instance_uid=seg_uid,
                series_instance_uid=STUDY_A.series,
                study_instance_uid=STUDY_A.study,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                orthanc_id="0000aaaa-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd",
                transfer_syntax="1.2.840.10008.1.2.1",
                source_transfer_syntax="1.2.840.10008.1.2.1",
                action="kept",
                lossless=True,
                stored_sha256="0" * 64,
                bytes_in=1,
                bytes_stored=1,
            )
        )
        rad = accounts.find_user(session, "rad")
    assert rad is not None
    volumes = {TRACKING[0]: 3.5, TRACKING[1]: 0.0}  # lesion 2 erased by the reader
    wanted = VerdictRequest(
        Verdict.CORRECTED, None, "corrected segmentation saved", seg_uid, json.dumps(volumes)
    )
    with world.app.test_request_context("/"):
        judged = judge(rad, STUDY_A.study, world.reading_id, wanted)
    assert judged.reading is not None, judged.message
    assert judged.reading["verdict"]["corrected_volumes_ml"] == volumes
    report = _fhir(world, f"DiagnosticReport/{world.report_id}")
    assert report["status"] == "corrected"
    first = _fhir(world, f"Observation/{world.observations[TRACKING[0]]}")
    assert first["status"] == "corrected" and first["valueQuantity"]["value"] == 3.5
    count_ref, total_ref = report["result"][0]["reference"], report["result"][1]["reference"]
    assert _fhir(world, count_ref)["valueInteger"] == 1
    assert _fhir(world, total_ref)["valueQuantity"]["value"] == 3.5
