"""Point Prefect at the right API before it is imported (it reads its settings at import)."""

from __future__ import annotations

import os

import httpx

from common.settings import Settings


def use_prefect_server(settings: Settings) -> str | None:
    """Use the stack's Prefect server when it answers; otherwise Prefect's ephemeral mode.

    Returns the API URL in use, or None for ephemeral mode. An explicit PREFECT_API_URL in the
    environment always wins (a worker or CI may set one).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    try:
        healthy = httpx.get(f"{settings.prefect_api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if healthy:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
        return settings.prefect_api_url
    return None
