"""Session fixtures: a real Orthanc, MariaDB and Redis started by the stack code, and one Prefect
test harness. Flows read `Settings()` from the environment, so the fixtures set
`NEURONOVA_*` variables for the whole session."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from common.db import migrate
from common.settings import Settings
from neuronova.stack.component import settings_env
from neuronova.stack.mariadb import create_database, drop_database
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack

# Every log the session's stack wrote is read once the suite is done (pytest_sessionfinish):
# no token (a JWT starts "eyJ") and no MRN of the tests' patients may be in any line of them.
_STACK_DIRS: list[Path] = []
_NEVER_LOGGED = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}|NN-DEMO-\d{4}|NN-TEST-[A-Z]+|SOMEONE-ELSE|\bA-[0-9a-f]{10}\b"
)

# A MariaDB or MySQL server of your own (a SQLAlchemy URL without a database, e.g.
# mysql+pymysql://user:password@db.example.org); unset, the tests use the stack's own MariaDB,
# which they start, and never a server the machine happens to run.
EXTERNAL_MYSQL = os.environ.get("NEURONOVA_TEST_MYSQL")


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for the test stack: its own folder and free loopback ports, its own MariaDB
    (a fresh database, dropped at the end) and Redis, fast retries. Set as NEURONOVA_*
    variables for the whole session, since flows read `Settings()` from the environment."""
    base = settings_on_free_ports(
        tmp_path_factory.mktemp("neuronova"),
        # Its own channel: nothing another session publishes reaches these tests.
        alerts_channel=f"neuronova:alerts:test-{uuid.uuid4().hex[:8]}",
        alerts_heartbeat_s=0.5,
        # Most tests ingest without the FHIR server and the EMR running; the tests of the
        # hand-off turn it on (tests/flows/test_run_inference.py).
        patient_sync_after_ingest=False,
        orthanc_retry_delays_s=[0.2, 0.5],
        ingest_batch_size=16,
        # Studies sent by C-STORE are stable (and handed on by the arrival watcher) this soon.
        orthanc_stable_age_s=2,
        # A worker's run silent this long is marked Crashed (heartbeats every 30 s).
        flow_crashed_after_s=60,
        # Small enough that the STOW-RS test can send a body over it.
        stow_max_bytes=8 * 1024 * 1024,
    )
    _STACK_DIRS.append(base.stack_dir)
    services = ["redis"] if EXTERNAL_MYSQL else ["mariadb", "redis"]
    stack = LocalStack(base)
    stack.up(services)
    name = f"neuronova_test_{uuid.uuid4().hex[:8]}"
    create_database(EXTERNAL_MYSQL or base.stack_mysql_url(), name)
    url = (
        f"{EXTERNAL_MYSQL}/{name}?charset=utf8mb4" if EXTERNAL_MYSQL else base.stack_mysql_url(name)
    )
    migrate(url)
    settings = base.model_copy(update={"database_url": url})
    patch = pytest.MonkeyPatch()
    for key, value in settings_env(settings).items():
        patch.setenv(key, value)
    yield Settings()
    patch.undo()
    if EXTERNAL_MYSQL:  # the stack's own server goes with the session's folder
        drop_database(EXTERNAL_MYSQL, name)
    stack.down(services)


@pytest.fixture(scope="session")
def mariadb_url(stack_settings: Settings) -> str:
    """The session's database on the stack's own MariaDB (or NEURONOVA_TEST_MYSQL's server)."""
    return stack_settings.resolved_database_url


# The databases a race must be answered the same way on: SQLite (WAL), the stack's MariaDB with
# snapshot isolation on (MariaDB 11.8's default, and the stack's on every version), and the same
# server with it off, as MariaDB 10.11 and MySQL 8 run by default.
RACING_DATABASES = ["sqlite", "mariadb", "mariadb-without-snapshot-isolation"]


@pytest.fixture(params=RACING_DATABASES)
def racing_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of each kind in RACING_DATABASES (the MariaDB ones are the session's
    database, so rows other tests wrote may be there: use keys of your own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue("mariadb_url")
    if request.param == "mariadb":
        return str(url)
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from common.db import get_engine

    try:  # read, never set here: the connection goes back to the session's pool
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT @@innodb_snapshot_isolation"))
    except DBAPIError:
        pytest.skip("this server has no innodb_snapshot_isolation (MySQL, MariaDB < 10.11.8)")
    off = quote("SET SESSION innodb_snapshot_isolation=OFF")
    without = f"{url}{'&' if '?' in url else '?'}init_command={off}"
    with get_engine(without).connect() as connection:
        assert connection.execute(text("SELECT @@innodb_snapshot_isolation")).scalar() == 0
    return without


@pytest.fixture(scope="session")
def orthanc(stack_settings: Settings) -> Iterator[Settings]:
    """A real Orthanc (Debian package) started by the same code as `neuronova stack up`."""
    stack = LocalStack(stack_settings)
    stack.up(["orthanc"])
    yield stack_settings
    stack.down(["orthanc"])


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any log of the session's stack holds a token or a test patient's MRN.

    The supervisor's own `=== … starting:` lines are left out: they name a component's
    command, and the EMR emulator's names the demo's sample patient it creates.
    """
    found = []
    for root in _STACK_DIRS:
        for log in sorted(root.rglob("*.log")):
            for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
                if not line.startswith("=== ") and _NEVER_LOGGED.search(line):
                    found.append(f"{log.relative_to(root)}:{number}")
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "a token or an MRN was logged (file:line, values not repeated): "
                + ", ".join(found[:20]),
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
