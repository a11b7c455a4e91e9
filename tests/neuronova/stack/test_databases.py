"""The stack's own MariaDB and Redis: started by the stack, on loopback ports of their own,
answering only with their generated passwords, keeping their data across `down` and `up`; and
the test session uses them, never a server the machine happens to run on the standard ports."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import pymysql
import pytest
import redis

from common.settings import Settings
from neuronova.stack.component import LOOPBACK
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack

pytestmark = pytest.mark.integration

SERVICES = ["mariadb", "redis"]


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Settings]]:
    settings = settings_on_free_ports(tmp_path_factory.mktemp("databases"))
    stack = LocalStack(settings)
    stack.up(SERVICES)
    yield stack, settings
    stack.down(SERVICES)


def _mysql(settings: Settings, user: str, password: str) -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1",
        port=settings.stack_mysql_port,
        user=user,
        password=password,
        connect_timeout=5,
    )


def test_they_report_secret_free_urls_and_their_credentials(
    databases: tuple[LocalStack, Settings],
) -> None:
    stack, settings = databases
    status = stack.status()
    for name in SERVICES:
        assert status["components"][name]["healthy"], status["components"][name]
    account = settings.stack_mysql_credentials()
    assert status["mysql"] == f"mysql+pymysql://neuronova@127.0.0.1:{settings.stack_mysql_port}"
    assert status["redis"] == f"redis://127.0.0.1:{settings.stack_redis_port}/0"
    assert status["credentials"]["mysql"] == account
    assert status["credentials"]["redis"] == settings.stack_redis_password()
    assert account["password"] not in status["mysql"] + status["redis"]
    # Where a script pushes by C-STORE, and as which modality (the default list).
    assert status["dicom"] == {
        "host": "127.0.0.1",
        "port": settings.orthanc_dicom_port,
        "aet": settings.orthanc_aet,
        "allowed": [{"aet": "STORESCU", "host": "127.0.0.1"}],
    }
    for name in ("mysql.password", "redis.password"):
        assert (settings.secrets_dir / name).stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("user", "password"),
    [("neuronova", ""), ("neuronova", "not-the-password"), ("root", ""), ("", "")],
    ids=["no password", "wrong password", "root over TCP", "anonymous"],
)
def test_mariadb_answers_only_with_the_password(
    databases: tuple[LocalStack, Settings], user: str, password: str
) -> None:
    _stack, settings = databases
    with pytest.raises(pymysql.err.OperationalError):
        _mysql(settings, user, password)


def test_redis_answers_only_with_the_password(databases: tuple[LocalStack, Settings]) -> None:
    _stack, settings = databases
    for password in (None, "not-the-password"):
        client = redis.Redis(host=LOOPBACK, port=settings.stack_redis_port, password=password)
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.ping()
        client.close()


def test_their_data_survive_down_and_up(databases: tuple[LocalStack, Settings]) -> None:
    stack, settings = databases
    account = settings.stack_mysql_credentials()
    connection = _mysql(settings, account["username"], account["password"])
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE IF NOT EXISTS kept_across_restarts")
    connection.close()
    with redis.Redis(
        host=LOOPBACK, port=settings.stack_redis_port, password=settings.stack_redis_password()
    ) as r:
        r.set("kept", "across restarts")

    stack.down(SERVICES)
    stack.up(SERVICES)

    connection = _mysql(settings, account["username"], account["password"])
    with connection.cursor() as cursor:
        cursor.execute("SHOW DATABASES LIKE 'kept_across_restarts'")
        assert cursor.fetchall() == (("kept_across_restarts",),)
    connection.close()
    with redis.Redis(
        host=LOOPBACK, port=settings.stack_redis_port, password=settings.stack_redis_password()
    ) as r:
        assert r.get("kept") == b"across restarts"


def test_the_test_session_names_none_of_the_machine_s_standard_ports(
    stack_settings: Settings,
) -> None:
    database = urlparse(stack_settings.resolved_database_url)
    alerts = urlparse(str(stack_settings.resolved_redis_url))
    if "NEURONOVA_TEST_MYSQL" not in os.environ:
        assert database.port == stack_settings.stack_mysql_port != _standard_port("mysql")
    assert alerts.port == stack_settings.stack_redis_port != _standard_port("redis")
    assert alerts.password == stack_settings.stack_redis_password()


def _standard_port(service: str) -> int | None:
    """The service's well-known port, from /etc/services (None in a root without it)."""
    try:
        return socket.getservbyname(service, "tcp")
    except OSError:
        return None
