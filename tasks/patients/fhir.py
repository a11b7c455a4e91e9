"""The FHIR R4 client: read, search by identifier, conditional create (`If-None-Exist`).

HAPI FHIR in production, @medplum/fhir-router in the local stack and the tests: the same
documented REST API, the same code path. 429 and 503 are retried here, honouring `Retry-After`
(bounded); other failures are raised as Transient/Permanent upstream errors for the task's
retry policy. A 412 on a conditional create means several Patients already carry the MRN:
that is a duplicate to merge by a person, never a reason to create another.
"""

from __future__ import annotations

import logging
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import requests

from common.errors import PermanentUpstreamError, TransientUpstreamError
from tasks.patients.mrn import fhir_token

if TYPE_CHECKING:
    from common.settings import Settings

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_RETRY_STATUSES = (429, 503)
_MAX_RETRY_AFTER_S = 30.0


class MultiplePatientsForMrn(PermanentUpstreamError):
    """FHIR holds more than one Patient for an MRN: flagged for a merge, nothing created."""

    def __init__(self, mrn: str) -> None:
        super().__init__(f"several FHIR Patients carry MRN {mrn}: flagged for a merge")
        self.mrn = mrn


class FhirClient:
    """A FHIR R4 server at `base_url` (e.g. https://fhir.example.org/fhir/R4)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON})

    @classmethod
    def from_settings(cls, settings: Settings) -> FhirClient:
        """A client for the configured FHIR server."""
        return cls(settings.fhir_url, timeout_s=settings.fhir_timeout_s)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- interactions

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The resource, or None when the server has no such id."""
        response = self._request("GET", f"{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            return None
        return self._json(response, f"read {resource_type}/{resource_id}")

    def search_by_identifier(
        self, resource_type: str, system: str, value: str
    ) -> list[dict[str, Any]]:
        """Every resource whose identifier is system|value."""
        response = self._request(
            "GET", resource_type, params={"identifier": fhir_token(system, value)}
        )
        bundle = self._json(response, f"search {resource_type} by identifier")
        return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]

    def conditional_create(
        self, resource: dict[str, Any], *, system: str, value: str
    ) -> tuple[dict[str, Any], bool]:
        """Create unless one exists with that identifier: (the resource, whether created).

        Safe to repeat after a lost answer: the condition finds the first attempt's resource.
        """
        resource_type = resource["resourceType"]
        response = self._request(
            "POST",
            resource_type,
            json=resource,
            headers={
                "Content-Type": FHIR_JSON,
                "If-None-Exist": urlencode({"identifier": fhir_token(system, value)}),
            },
        )
        if response.status_code == 412:
            if resource_type == "Patient":
                raise MultiplePatientsForMrn(value)
            raise PermanentUpstreamError(
                f"several {resource_type} resources carry identifier {system}|{value}: "
                "remove the duplicates on the FHIR server, then re-run"
            )
        if response.status_code == 201:
            return self._json(response, f"create {resource_type}"), True
        if response.status_code == 200:
            body = self._json(response, f"create {resource_type}")
            if body.get("resourceType") == resource_type:
                return body, False
            # Some servers answer 200 with no body for a match: find it.
            (found,) = self.search_by_identifier(resource_type, system, value)
            return found, False
        raise self._error(response, f"create {resource_type}")

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        """PUT a resource that has an id (a new version of it)."""
        path = f"{resource['resourceType']}/{resource['id']}"
        response = self._request("PUT", path, json=resource, headers={"Content-Type": FHIR_JSON})
        return self._json(response, f"update {path}")

    # ---- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}/{path}"
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
            except requests.RequestException as err:
                raise TransientUpstreamError(f"FHIR {method} {path}: {type(err).__name__}") from err
            if response.status_code not in _RETRY_STATUSES or attempt == self.max_attempts:
                return response
            wait = retry_after_s(response.headers.get("Retry-After"), default=0.5 * 2**attempt)
            log.info(
                "FHIR answered %d to %s %s; retrying in %.1f s",
                response.status_code,
                method,
                path,
                wait,
            )
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _json(self, response: requests.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            raise self._error(response, what)
        try:
            body: dict[str, Any] = response.json()
        except ValueError as err:
            raise TransientUpstreamError(f"FHIR {what}: answer is not JSON") from err
        return body

    @staticmethod
    def _error(response: requests.Response, what: str) -> Exception:
        message = f"FHIR {what} answered HTTP {response.status_code}"
        if response.status_code >= 500 or response.status_code in _RETRY_STATUSES:
            return TransientUpstreamError(message)
        return PermanentUpstreamError(message)


def retry_after_s(header: str | None, *, default: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), bounded."""
    if not header:
        return min(default, _MAX_RETRY_AFTER_S)
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = default
    return max(0.0, min(seconds, _MAX_RETRY_AFTER_S))
