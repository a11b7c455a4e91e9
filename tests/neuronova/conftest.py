"""The whole local stack, started once for the tests of `neuronova` that need it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from tests.support.processes import gone, processes_mentioning


@pytest.fixture(scope="package")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole stack (Orthanc, Prefect, webapp, nginx, …), once for this package."""
    folder = tmp_path_factory.mktemp("full")
    # A database of its own, as a new stack's (SQLite under its folder): never the session's,
    # whose arrivals and change-log cursor belong to another Orthanc.
    database = f"sqlite:///{folder / 'neuronova.db'}"
    stack = LocalStack(settings_on_free_ports(folder, database_url=database))
    status = stack.up()
    pids = [detail["pid"] for detail in status["components"].values()]
    yield stack
    stack.down()
    assert all(gone(pid) for pid in pids)
    assert not processes_mentioning(str(stack.root))
