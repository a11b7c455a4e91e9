"""Orthanc REST client: store, read back, look up, replace and list instances.

The client is thread-safe (one urllib3 connection pool, kept alive) so a batch can upload
concurrently; urllib3 rather than httpx because ingest is bound by the client's CPU under the
GIL, and urllib3 spends about half as much per request. Every failure is mapped to
`TransientUpstreamError` (worth a retry: refused, timeout, 5xx, 429) or
`PermanentUpstreamError` (a 4xx that will fail the same way again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import urllib3

from common.errors import PermanentUpstreamError, TransientUpstreamError
from common.settings import Settings

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's ID of a study, computed as Orthanc does: the SHA-1 of "PatientID|StudyUID" in
    five dash-separated groups of eight hex digits (so it is known without asking Orthanc, even
    once the study has left it)."""
    digest = hashlib.sha1(f"{patient_id}|{study_uid}".encode(), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class StoredInstance:
    """Orthanc's answer to an upload."""

    orthanc_id: str
    status: Literal["Success", "AlreadyStored"]  # Orthanc's words
    series_id: str
    study_id: str

    @property
    def already_stored(self) -> bool:
        return self.status == "AlreadyStored"


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, read whole."""

    status: int
    content: bytes
    reason: str

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


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
        self.base_url = base_url.rstrip("/")
        self._prefix = urlsplit(self.base_url).path
        self._retries = request_retries
        self._backoff_s = backoff_s
        # Compression on a local link costs both sides CPU and buys nothing; HTJ2K is
        # already compressed.
        headers = {"Accept-Encoding": "identity"}
        if username:
            headers.update(urllib3.make_headers(basic_auth=f"{username}:{password or ''}"))
        self._pool = urllib3.connection_from_url(
            self.base_url,
            maxsize=max_connections,
            block=True,
            headers=headers,
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
            retries=False,  # retries are ours: they know which failures are worth it
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, request_retries: int = 2) -> OrthancClient:
        """A client for the configured Orthanc, pooled for the configured upload concurrency."""
        username, password = settings.orthanc_credentials() or (None, None)
        return cls(
            settings.orthanc_url,
            timeout_s=settings.orthanc_timeout_s,
            username=username,
            password=password,
            max_connections=settings.ingest_workers * 2,
            request_retries=request_retries,
        )

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Reply:
        """Send one request, retrying transient failures; raise an UpstreamError otherwise."""
        attempt = 0
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        while True:
            try:
                return self._send_once(method, target, content, headers)
            except TransientUpstreamError:
                if attempt >= self._retries:
                    raise
                delay = self._backoff_s * (2**attempt) * (1 + random.random())  # noqa: S311
                attempt += 1
                log.warning("Orthanc %s %s failed, retry %d in %.2fs", method, path, attempt, delay)
                time.sleep(delay)

    def _send_once(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str] | None
    ) -> Reply:
        try:
            response = self._pool.urlopen(
                method, target, body=body, headers={**self._pool.headers, **(headers or {})}
            )
        except urllib3.exceptions.HTTPError as err:
            raise TransientUpstreamError(
                f"Orthanc at {self.base_url} did not answer {method} {target}: "
                f"{type(err).__name__}. Is it running? (`neuronova stack status`)"
            ) from err
        reply = Reply(response.status, response.data, response.reason or "")
        if reply.status in _RETRYABLE_STATUS:
            raise TransientUpstreamError(f"Orthanc answered {reply.status} to {method} {target}")
        if reply.status >= 400:
            raise PermanentUpstreamError(
                f"Orthanc refused {method} {target} with {reply.status}: {_orthanc_message(reply)}"
            )
        return reply

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

    def instance_frame_raw(self, orthanc_id: str, frame: int = 0) -> bytes:
        """One frame's pixel data as stored (for HTJ2K: the codestream), no DICOM around it."""
        return self._request("GET", f"/instances/{orthanc_id}/frames/{frame}/raw").content

    def dicomweb_json(self, path: str, query: Iterable[tuple[str, str]] = ()) -> Any:
        """A DICOMweb search or metadata answer (`path` under Orthanc's root, e.g.
        /dicom-web/studies/…/metadata) as DICOM JSON."""
        if not path.startswith("/dicom-web/"):
            raise ValueError(f"not a DICOMweb path: {path[:80]!r}")
        reply = self._request(
            "GET", path, headers={"Accept": "application/dicom+json"}, params=dict(query)
        )
        return reply.json()

    def dicomweb_retrieve_stream(self, path: str) -> urllib3.BaseHTTPResponse:
        """A DICOMweb series or study retrieve as stored (`transfer-syntax=*`), not yet read:
        the caller reads the multipart body as it comes and releases the answer. One attempt
        (a stream half sent cannot be retried); an UpstreamError when Orthanc does not answer
        200."""
        if not path.startswith("/dicom-web/studies/"):
            raise ValueError(f"not a DICOMweb retrieve: {path[:80]!r}")
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        try:
            response = self._pool.urlopen(
                "GET",
                self._prefix + path,
                headers={**self._pool.headers, "Accept": accept},
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as err:
            raise TransientUpstreamError(f"Orthanc did not answer GET {path}: {err}") from err
        if response.status != 200:
            response.drain_conn()
            response.release_conn()
            error = (
                TransientUpstreamError
                if response.status in _RETRYABLE_STATUS
                else PermanentUpstreamError
            )
            raise error(f"Orthanc answered {response.status} to GET {path}")
        return response

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """GET /instances/{id}/simplified-tags: every tag by keyword (pixel data left out)."""
        return dict(self._request("GET", f"/instances/{orthanc_id}/simplified-tags").json())

    def series_instances(self, series_id: str) -> list[dict[str, Any]]:
        """GET /series/{id}/instances: each instance with its main DICOM tags (one request)."""
        return list(self._request("GET", f"/series/{series_id}/instances").json())

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
        found = self.lookup_all(dicom_uid, resource_type)
        return found[0] if found else None

    def lookup_all(self, dicom_uid: str, resource_type: str = "Instance") -> list[str]:
        """Every Orthanc ID under a DICOM UID: Orthanc keys a study by PatientID and
        StudyInstanceUID, so files of two patients naming one study UID make two studies."""
        matches = self._request("POST", "/tools/lookup", content=dicom_uid.encode()).json()
        return [str(m["ID"]) for m in matches if m.get("Type") == resource_type]

    def delete_instance(self, orthanc_id: str) -> None:
        """Delete an instance; one already gone counts as deleted (a retried DELETE whose first
        answer was lost gets 404)."""
        try:
            self._request("DELETE", f"/instances/{orthanc_id}")
        except PermanentUpstreamError:
            if self.instance_exists(orthanc_id):
                raise

    def instance_parents(self, orthanc_id: str) -> tuple[str, str]:
        """The Orthanc IDs of an instance's series and study."""
        series_id = str(self._request("GET", f"/instances/{orthanc_id}").json()["ParentSeries"])
        study_id = str(self._request("GET", f"/series/{series_id}").json()["ParentStudy"])
        return series_id, study_id

    def study(self, study_id: str) -> dict[str, Any]:
        """GET /studies/{id}: the study's main DICOM tags and its series' IDs."""
        return dict(self._request("GET", f"/studies/{study_id}").json())

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """The series of one study, each with its main DICOM tags and instance IDs."""
        return list(self._request("GET", f"/studies/{study_id}/series").json())

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """The instances of one study with their main DICOM tags."""
        return list(self._request("GET", f"/studies/{study_id}/instances").json())

    def changes(self, since: int, limit: int = 200) -> dict[str, Any]:
        """GET /changes: Orthanc's change log after sequence number `since`, oldest first:
        `{"Changes": [{"ChangeType", "ID", "ResourceType", "Seq", …}], "Done", "Last"}`."""
        reply = self._request("GET", "/changes", params={"since": since, "limit": limit})
        return dict(reply.json())

    def last_change_seq(self) -> int:
        """The sequence number of Orthanc's newest change (0 when it has none)."""
        reply = self._request("GET", "/changes", params={"last": ""})
        return int(reply.json().get("Last", 0))

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


def _orthanc_message(reply: Reply) -> str:
    """Orthanc's own short error text, never a whole body."""
    try:
        body = reply.json()
    except ValueError:
        return reply.reason
    if isinstance(body, dict):
        return str(body.get("Message") or body.get("Details") or reply.reason)[:200]
    return reply.reason
