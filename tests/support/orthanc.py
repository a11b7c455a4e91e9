"""Orthanc's REST API as the tests reach it: with the service account, like our clients."""

from __future__ import annotations

import httpx

from common.settings import Settings


def orthanc_http(settings: Settings, timeout_s: float = 30) -> httpx.Client:
    """A client for the stack's Orthanc that presents its service account."""
    return httpx.Client(
        base_url=settings.orthanc_url, auth=settings.orthanc_credentials(), timeout=timeout_s
    )
