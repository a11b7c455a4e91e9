"""Session fixtures: a real Orthanc started by the stack code, a real MariaDB database, and
one Prefect test harness. Flows read `Settings()` from the environment, so the fixtures set
`NEURONOVA_*` variables for the whole session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from common.db import migrate
from common.settings import Settings
from neuronova.stack.ports import free_consecutive_ports, free_ports
from neuronova.stack.supervisor import LocalStack
from neuronova.stack.workers import WORKER_POOLS

MARIADB_SERVER = os.environ.get("NEURONOVA_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306")


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A fresh database on the machine's MariaDB, dropped at the end of the session."""
    name = f"neuronova_test_{uuid.uuid4().hex[:8]}"
    server = create_engine(MARIADB_SERVER, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    url = f"{MARIADB_SERVER}/{name}?charset=utf8mb4"
    migrate(url)
    yield url
    with server.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    server.dispose()


@pytest.fixture(scope="session")
def stack_settings(
    tmp_path_factory: pytest.TempPathFactory, mariadb_url: str
) -> Iterator[Settings]:
    """Settings for the test stack: own folder, free ports, MariaDB, fast retries."""
    orthanc_http, orthanc_dicom, prefect, gateway, webapp, fhir, emr, alerts = free_ports(8)
    env = {
        "NEURONOVA_ENVIRONMENT": "test",
        "NEURONOVA_DATA_DIR": str(tmp_path_factory.mktemp("neuronova")),
        "NEURONOVA_DATABASE_URL": mariadb_url,
        "NEURONOVA_ORTHANC_URL": f"http://127.0.0.1:{orthanc_http}",
        "NEURONOVA_ORTHANC_DICOM_PORT": str(orthanc_dicom),
        "NEURONOVA_PREFECT_API_URL": f"http://127.0.0.1:{prefect}/api",
        "NEURONOVA_GATEWAY_URL": f"http://127.0.0.1:{gateway}",
        "NEURONOVA_WEBAPP_URL": f"http://127.0.0.1:{webapp}",
        "NEURONOVA_FHIR_URL": f"http://127.0.0.1:{fhir}/fhir/R4",
        "NEURONOVA_EMR_URL": f"http://127.0.0.1:{emr}",
        "NEURONOVA_ALERTS_URL": f"http://127.0.0.1:{alerts}",
        "NEURONOVA_WORKER_HEALTH_PORT": str(free_consecutive_ports(len(WORKER_POOLS))),
        # Its own channel: other test sessions on this machine's Redis hear nothing of ours.
        "NEURONOVA_ALERTS_CHANNEL": f"neuronova:alerts:test-{uuid.uuid4().hex[:8]}",
        "NEURONOVA_ALERTS_HEARTBEAT_S": "0.5",
        # Most tests ingest without the FHIR server and the EMR running; the tests of the
        # hand-off turn it on (tests/flows/test_run_inference.py).
        "NEURONOVA_PATIENT_SYNC_AFTER_INGEST": "false",
        "NEURONOVA_ORTHANC_RETRY_DELAYS_S": "[0.2, 0.5]",
        "NEURONOVA_INGEST_BATCH_SIZE": "16",
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    yield Settings()
    patch.undo()


@pytest.fixture(scope="session")
def orthanc(stack_settings: Settings) -> Iterator[Settings]:
    """A real Orthanc (Debian package) started by the same code as `neuronova stack up`."""
    stack = LocalStack(stack_settings)
    stack.up(["orthanc"])
    yield stack_settings
    stack.down()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness per session (it costs ~10 s to start)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def stack_prefect(stack_settings: Settings) -> Iterator[str]:
    """The stack's Prefect server (the same code as `neuronova stack up`): for the workers'
    tests and the Prefect UI behind the gateway. Returns its API URL."""
    stack = LocalStack(stack_settings)
    stack.up(["prefect"])
    yield stack_settings.prefect_api_url
    stack.down(["prefect"])


@pytest.fixture(scope="session")
def gateway(orthanc: Settings) -> Iterator[Settings]:
    """The webapp (gunicorn) and nginx with OHIF in front of the test Orthanc, on MariaDB."""
    stack = LocalStack(orthanc)
    stack.up(["webapp", "alerts", "nginx"])
    yield orthanc
    stack.down(["webapp", "alerts", "nginx"])


@pytest.fixture(scope="session")
def patient_sources(stack_settings: Settings) -> Iterator[Settings]:
    """The FHIR server (@medplum/fhir-router on Node) and the OpenEMR emulator, on MariaDB."""
    stack = LocalStack(stack_settings)
    stack.up(["fhir", "emr"])
    yield stack_settings
    stack.down(["fhir", "emr"])
