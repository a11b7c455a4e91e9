"""The stack's Prefect server as the API in use, for the tests of deployments and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.settings import Settings


@pytest.fixture(scope="module")
def prefect_server(stack_prefect: str, stack_settings: Settings) -> Iterator[str]:
    """The stack's Prefect server, as the API in use (with its auth string, as every client)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    auth = stack_settings.stack_prefect_auth_string()
    with temporary_settings({PREFECT_API_URL: stack_prefect, PREFECT_API_AUTH_STRING: auth}):
        yield stack_prefect
