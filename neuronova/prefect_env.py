"""Point Prefect at the right API before it is imported (it reads its settings at import)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from common.settings import Settings


def use_prefect_server(settings: Settings) -> str | None:
    """Use the stack's Prefect server when it answers; otherwise Prefect's ephemeral mode.

    Returns the API URL in use, or None for ephemeral mode. An explicit PREFECT_API_URL in the
    environment always wins (a worker or CI may set one).
    """
    if os.environ.get("PREFECT_API_URL"):
        return use_stack_prefect(settings)
    try:
        healthy = httpx.get(f"{settings.prefect_api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if healthy:
        return use_stack_prefect(settings)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return None


def use_stack_prefect(settings: Settings) -> str:
    """Use the stack's Prefect server (or an explicit PREFECT_API_URL) without asking whether
    it answers: for a command that is about to start the stack (`neuronova demo`), since
    Prefect's settings are fixed when the stack code first imports it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(prefect_results_dir(settings)))
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_api_url)
    if os.environ["PREFECT_API_URL"].rstrip("/") == settings.prefect_api_url.rstrip("/"):
        # The stack's server demands its auth string (PREFECT_SERVER_API_AUTH_STRING).
        os.environ.setdefault("PREFECT_API_AUTH_STRING", settings.stack_prefect_auth_string())
    return os.environ["PREFECT_API_URL"]


def prefect_results_dir(settings: Settings) -> Path:
    """Where flow reports are persisted (`flows.REPORTED`): the local stack's workers write them
    there, and the CLI that triggered the run reads them back."""
    return (settings.data_dir / "prefect-results").resolve()
