"""scripts/compose-check: docker-compose.yml run as written, laid out as Docker lays it out
(tests/support/compose_lab.py), end to end: a modality C-STOREs the sample MR to the published
DICOM port, the arrival is ingested and read (SEG, report), a clinician signs in through nginx's
published HTTPS port in Chromium and sees the study drawn; and nothing but the published ports
answers on the host.

A service on the wrong network fails here the way it would in Docker: its peer's name does not
resolve, or its connection has no route.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from common.settings import PROJECT_ROOT
from neuronova.compose_secrets import generate_secrets
from neuronova.sample import SAMPLE_PATIENT_ID
from neuronova.sample_mr import write_sample_mr_study
from tests.support.compose_file import compose_config, env_example
from tests.support.compose_lab import ComposeLab, listening
from tests.support.nginx_production import self_signed_certificate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

PUBLIC_HOST = "neuronova.hospital.example"
PROFILES = "cpu-inference,bundled-clinical"
CLINICIAN = "lab-clinician"
# Ports the file does not publish: none may answer on the host (Orthanc's HTTP, MySQL,
# PostgreSQL, Redis, the Prefect API, the webapp, the alerts pool, the FHIR server, OpenEMR).
UNPUBLISHED = (8042, 3306, 5432, 6379, 4200, 8081, 8082, 8080, 80 + 10000)


def _env(modalities_gateway: str | None) -> dict[str, str]:
    env = env_example() | {
        "COMPOSE_PROFILES": PROFILES,
        "NEURONOVA_PUBLIC_URL": f"https://{PUBLIC_HOST}",
        "NEURONOVA_ORTHANC_STABLE_AGE_S": "3",
        "NEURONOVA_SCHEDULE_TIMEZONE": "Europe/Berlin",
        "NEURONOVA_HTTP_BIND": "127.0.0.1",
        "NEURONOVA_HTTPS_BIND": "127.0.0.1",
        "NEURONOVA_DICOM_BIND": "127.0.0.1",
    }
    if modalities_gateway:
        # A C-STORE through the published port reaches Orthanc from the modalities network's
        # gateway, as through Docker's proxy.
        modality = [{"aet": "STORESCU", "host": modalities_gateway, "port": 11112}]
        env["NEURONOVA_DICOM_MODALITIES"] = json.dumps(modality)
    return env


@pytest.fixture(scope="module")
def compose_lab() -> Iterator[ComposeLab]:
    if os.geteuid() != 0:
        pytest.fail("scripts/compose-check needs root (network namespaces)")
    # Not under /tmp: every service gets a /tmp of its own, which would hide the lab's files.
    home = Path(tempfile.mkdtemp(prefix="neuronova-compose-check-", dir="/var/tmp"))
    project = home / "project"
    project.mkdir()
    generate_secrets(project / "secrets")
    self_signed_certificate(project / "secrets" / "tls", PUBLIC_HOST)
    (project / "secrets" / "dicom-tls").mkdir()
    first = compose_config(_env(None), project)
    gateway = ComposeLab(first, project, home, set(PROFILES.split(","))).gateway_of("modalities")
    config = compose_config(_env(gateway), project)
    lab = ComposeLab(config, project, home, set(PROFILES.split(",")))
    try:
        lab.up(timeout_s=900)
        yield lab
    except Exception:
        _keep_logs(home)
        raise
    finally:
        lab.down()
        _keep_logs(home)
        shutil.rmtree(home, ignore_errors=True)


def _keep_logs(home: Path) -> None:
    """The services' logs, where CI keeps test artifacts."""
    artifacts = Path(os.environ.get("NEURONOVA_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
    if (home / "logs").exists():
        shutil.copytree(home / "logs", artifacts / "compose-check-logs", dirs_exist_ok=True)


def test_only_the_published_ports_answer_on_the_host(compose_lab: ComposeLab) -> None:
    assert listening(compose_lab, 443), "nginx's HTTPS port is not published"
    assert listening(compose_lab, 80), "nginx's HTTP port is not published"
    assert listening(compose_lab, 4242), "Orthanc's DICOM port is not published"
    answering = [port for port in UNPUBLISHED if listening(compose_lab, port)]
    assert answering == []


def test_each_service_resolves_only_what_it_shares_a_network_with(compose_lab: ComposeLab) -> None:
    probe = "import socket, sys; socket.gethostbyname(sys.argv[1])"
    webapp_sees = compose_lab.exec("webapp", ["python", "-c", probe, "orthanc"])
    assert webapp_sees.returncode == 0, webapp_sees.stderr  # the gate reads from Orthanc
    # Orthanc's index is its own: nothing else even resolves its database.
    hidden = compose_lab.exec("webapp", ["python", "-c", probe, "orthanc-db"])
    assert hidden.returncode != 0


def test_a_modality_cstore_is_ingested_read_and_viewed_through_nginx(
    compose_lab: ComposeLab,
) -> None:
    folder = compose_lab.home / "sample-mr"
    files, _mask = write_sample_mr_study(folder)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    sent = compose_lab.lab.run_in_host(
        [
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            "NEURONOVA",
            "127.0.0.1",
            "4242",
            *map(str, files),
        ],
        timeout_s=300,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    # As an operator would look: `docker compose exec webapp python …`.
    wait = (
        "import json, sys; from common.settings import Settings; "
        "from neuronova.demo import wait_for_reading; "
        "arrivals, reading = wait_for_reading(Settings(), sys.argv[1], 480); "
        "print(json.dumps({'arrivals': [a.state for a in arrivals], "
        "'reading': reading and reading.model_dump(mode='json')}))"
    )
    done = compose_lab.exec("webapp", ["python", "-c", wait, study_uid], timeout_s=540)
    assert done.returncode == 0, done.stdout + done.stderr + compose_lab.log_tail("worker-cpu")
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    reading = outcome["reading"]
    assert reading is not None, (
        f"no reading: {outcome}\n{compose_lab.log_tail('worker-cpu')}\n"
        f"{compose_lab.log_tail('worker-inference-cpu')}"
    )
    assert reading["status"] == "completed" and reading["lesion_count"] >= 1
    assert reading["fhir_report_id"], "the FHIR DiagnosticReport was not written"
    assert reading["seg_sop_instance_uid"]

    password_file = compose_lab.home / "clinician.password"
    password_file.write_text("compose-check clinician password 1\n")
    password_file.chmod(0o600)
    added = compose_lab.exec(
        "webapp",
        ["neuronova", "users", "add", CLINICIAN, "--role", "clinician", "--password-stdin"],
        input_text=password_file.read_text(),
    )
    assert added.returncode == 0, added.stdout + added.stderr
    granted = compose_lab.exec(
        "webapp", ["neuronova", "users", "grant", CLINICIAN, "--patient", SAMPLE_PATIENT_ID]
    )
    assert granted.returncode == 0, granted.stdout + granted.stderr

    python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
    viewed = compose_lab.lab.run_in_host(
        [
            python, "-m", "tests.support.compose_browser", f"https://{PUBLIC_HOST}",
            CLINICIAN, str(password_file), study_uid, str(folder),
        ],
        timeout_s=300,
        env={**os.environ, "HOME": str(compose_lab.home)},
    )  # fmt: skip
    assert viewed.returncode == 0, viewed.stdout + viewed.stderr
    seen = json.loads(viewed.stdout.strip().splitlines()[-1])
    assert seen["signed_in"] and study_uid in seen["rows"], seen
    assert seen["drawn"], f"no image drawn: {seen}"
    assert seen["score"] > 0.9, f"what OHIF drew does not look like the study: {seen}"
    assert seen["gate_statuses"] == [200], seen

    # The webapp believed nginx's X-Real-IP: the sign-in is audited from where the browser
    # came (the host's side of nginx's published port), not from nginx.
    audit = (
        "import json; from sqlmodel import select; from common.db import AuditEvent, "
        "session_scope; from common.settings import Settings; "
        "s = session_scope(Settings().resolved_database_url).__enter__(); "
        f"rows = s.exec(select(AuditEvent.client_addr).where(AuditEvent.username == '{CLINICIAN}')); "
        "print(json.dumps(sorted({r for r in rows if r})))"
    )
    addresses = compose_lab.exec("webapp", ["python", "-c", audit])
    assert addresses.returncode == 0, addresses.stderr
    seen_from = json.loads(addresses.stdout.strip().splitlines()[-1])
    nginx = compose_lab.services["nginx"].node.addresses
    assert seen_from and not set(seen_from) & {str(a) for a in nginx.values()}, seen_from
