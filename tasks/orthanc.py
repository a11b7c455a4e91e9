"""Orthanc REST client: store, read back, look up, replace and list instances.

The client is thread-safe (one `httpx.Client` with a connection pool) so a batch can upload
concurrently. Every failure is mapped to `TransientUpstreamError` (worth a retry: refused,
timeout, 5xx, 429) or `PermanentUpstreamError` (a 4xx that will fail the same way again).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx

from common.errors import PermanentUpstreamError, TransientUpstreamError
from common.settings import Settings

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class StoredInstance:
    """Orthanc's answer to an upload."""

    orthanc_id: str
    status: str  # "Success" or "AlreadyStored"
    series_id: str
    study_id: str

    @property
    def already_stored(self) -> bool:
        return self.status == "AlreadyStored"


class OrthancClient:
    """A small client for the Orthanc REST API.

    `request_retries` retries one request on transient failures with exponential backoff and
    jitter; it absorbs short hiccups. Longer outages are the Prefect task's retries' job.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        username: str | None = None,
        password: str | None = None,
        max_connections: int = 16,
        request_retries: int = 2,
        backoff_s: float = 0.25,
    ) -> None:
        auth = httpx.BasicAuth(username, password or "") if username else None
        self.base_url = base_url.rstrip("/")
        self._retries = request_retries
        self._backoff_s = backoff_s
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            auth=auth,
            verify=_tls_context(),
            # Compression on a local link costs both sides CPU and buys nothing; HTJ2K is
            # already compressed.
            headers={"Accept-Encoding": "identity"},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OrthancClient:
        """A client for the configured Orthanc, pooled for the configured upload concurrency."""
        password = settings.orthanc_password
        return cls(
            settings.orthanc_url,
            timeout_s=settings.orthanc_timeout_s,
            username=settings.orthanc_username,
            password=password.get_secret_value() if password else None,
            max_connections=settings.ingest_workers * 2,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request, retrying transient failures; raise an UpstreamError otherwise."""
        attempt = 0
        while True:
            try:
                return self._send_once(method, path, **kwargs)
            except TransientUpstreamError:
                if attempt >= self._retries:
                    raise
                delay = self._backoff_s * (2**attempt) * (1 + random.random())  # noqa: S311
                attempt += 1
                log.warning("Orthanc %s %s failed, retry %d in %.2fs", method, path, attempt, delay)
                time.sleep(delay)

    def _send_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.TransportError, httpx.TimeoutException) as err:
            raise TransientUpstreamError(
                f"Orthanc at {self.base_url} did not answer {method} {path}: "
                f"{type(err).__name__}. Is it running? (`neuronova stack status`)"
            ) from err
        if response.status_code in _RETRYABLE_STATUS:
            raise TransientUpstreamError(
                f"Orthanc answered {response.status_code} to {method} {path}"
            )
        if response.status_code >= 400:
            raise PermanentUpstreamError(
                f"Orthanc refused {method} {path} with {response.status_code}: "
                f"{_orthanc_message(response)}"
            )
        return response

    # -- API --------------------------------------------------------------------------------

    def system(self) -> dict[str, Any]:
        """GET /system: name, version, plugins; also a liveness check."""
        return dict(self._request("GET", "/system").json())

    def store_instance(self, data: bytes) -> StoredInstance:
        """Upload one DICOM file. An existing SOPInstanceUID is left as is ("AlreadyStored")."""
        body = self._request(
            "POST", "/instances", content=data, headers={"Content-Type": "application/dicom"}
        ).json()
        return StoredInstance(
            orthanc_id=body["ID"],
            status=body["Status"],
            series_id=body["ParentSeries"],
            study_id=body["ParentStudy"],
        )

    def get_instance_file(self, orthanc_id: str) -> bytes:
        """The stored file, byte for byte."""
        return self._request("GET", f"/instances/{orthanc_id}/file").content

    def instance_exists(self, orthanc_id: str) -> bool:
        try:
            self._request("GET", f"/instances/{orthanc_id}")
        except PermanentUpstreamError:
            return False
        return True

    def instance_transfer_syntax(self, orthanc_id: str) -> str:
        """The transfer syntax of a stored instance.

        Orthanc records it as metadata only for syntaxes its DCMTK knows; 1.10 does not know
        HTJ2K, so fall back to the file meta header.
        """
        try:
            response = self._request("GET", f"/instances/{orthanc_id}/metadata/TransferSyntax")
            return response.text.strip()
        except PermanentUpstreamError:
            header = self._request("GET", f"/instances/{orthanc_id}/header?simplify").json()
            return str(header.get("TransferSyntaxUID", "")).strip()

    def lookup(self, dicom_uid: str, resource_type: str = "Instance") -> str | None:
        """The Orthanc ID of a DICOM UID (patient, study, series or instance), or None."""
        matches = self._request("POST", "/tools/lookup", content=dicom_uid.encode()).json()
        for match in matches:
            if match.get("Type") == resource_type:
                return str(match["ID"])
        return None

    def delete_instance(self, orthanc_id: str) -> None:
        self._request("DELETE", f"/instances/{orthanc_id}")

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """The instances of one study with their main DICOM tags."""
        return list(self._request("GET", f"/studies/{study_id}/instances").json())

    def iter_study_ids(self, page_size: int = 500) -> Iterator[str]:
        """Study IDs page by page, so a large archive is not listed in one answer."""
        since = 0
        while True:
            page = self._request("GET", "/studies", params={"since": since, "limit": page_size})
            ids = list(page.json())
            yield from ids
            if len(ids) < page_size:
                return
            since += page_size


@cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (~50 ms here)."""
    return ssl.create_default_context()


def _orthanc_message(response: httpx.Response) -> str:
    """Orthanc's own short error text, never a whole body."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("Message") or body.get("Details") or response.reason_phrase)[:200]
    return response.reason_phrase


def is_transient(err: BaseException) -> bool:
    """True for failures a retry can fix (used as Prefect's retry condition)."""
    return isinstance(err, TransientUpstreamError)
