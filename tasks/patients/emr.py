"""The OpenEMR Standard API client: OAuth2 password grant, patients list/read/create.

The access token is cached and refreshed (refresh grant first, password grant when that
fails); a 401 on an API call gets one new token and one more try. `pubpid` (the MRN) is not a
search filter upstream, so finding a patient by MRN pages through the list and matches here.
Creates are never blindly repeated: after a lost answer the caller looks the MRN up first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import requests

from common.errors import PermanentUpstreamError, TransientUpstreamError

if TYPE_CHECKING:
    from common.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "openid offline_access api:oemr user/patient.read user/patient.write"
_TOKEN_MARGIN_S = 30.0


class OpenEmrClient:
    """OpenEMR at `base_url` (e.g. https://emr.example.org), site `default`."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str,
        username: str,
        password: str,
        scope: str = DEFAULT_SCOPE,
        timeout_s: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api = f"{self.base_url}/apis/default/api"
        self._client = (client_id, client_secret)
        self._user = (username, password)
        self.scope = scope
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self._token: str | None = None
        self._refresh: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenEmrClient:
        """A client for the configured OpenEMR, with its OAuth2 client and API user."""
        credentials = settings.emr_credentials()
        return cls(
            settings.emr_url,
            client_id=credentials["client_id"],
            client_secret=credentials["client_secret"],
            username=credentials["username"],
            password=credentials["password"],
            timeout_s=settings.emr_timeout_s,
        )

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> OpenEmrClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- patients

    def list_patients(
        self, *, limit: int = 100, offset: int = 0, sort: str = "pid"
    ) -> list[dict[str, Any]]:
        """One page of patients (the `data` of OpenEMR's envelope)."""
        params = {"_limit": str(limit), "_offset": str(offset), "_sort": sort}
        data = self._data(self._call("GET", "patient", params=params), "list patients")
        return list(data) if isinstance(data, list) else []

    def iter_patients(self, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Every patient, page by page, in pid order."""
        offset = 0
        while True:
            page = self.list_patients(limit=page_size, offset=offset)
            yield from page
            if len(page) < page_size:
                return
            offset += page_size

    def get_patient(self, patient_uuid: str) -> dict[str, Any] | None:
        response = self._call("GET", f"patient/{patient_uuid}")
        if response.status_code == 404:
            return None
        data = self._data(response, f"read patient {patient_uuid}")
        return data if isinstance(data, dict) else None

    def find_by_mrn(self, mrn: str, page_size: int = 500) -> dict[str, Any] | None:
        """The patient whose pubpid is `mrn` (matched here: upstream cannot filter on it)."""
        for patient in self.iter_patients(page_size):
            if patient.get("pubpid") == mrn:
                return patient
        return None

    def create_patient(self, fields: dict[str, str]) -> dict[str, Any]:
        """Create a patient; returns `{"pid", "uuid"}`. Not retried here (see module doc)."""
        data = self._data(self._call("POST", "patient", json=fields), "create patient")
        return data if isinstance(data, dict) else {}

    # ---- plumbing

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        for attempt in (1, 2):
            headers = {
                "Authorization": f"Bearer {self._access_token()}",
                "Accept": "application/json",
            }
            try:
                response = self.session.request(
                    method, f"{self.api}/{path}", headers=headers, timeout=self.timeout_s, **kwargs
                )
            except requests.RequestException as err:
                raise TransientUpstreamError(
                    f"OpenEMR {method} {path}: {type(err).__name__}"
                ) from err
            if response.status_code == 401 and attempt == 1:
                self._invalidate()  # expired or revoked: one new token, one more try
                continue
            return response
        raise PermanentUpstreamError(f"OpenEMR {method} {path}: token refused twice")

    def _data(self, response: requests.Response, what: str) -> Any:
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientUpstreamError(f"OpenEMR {what} answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PermanentUpstreamError(f"OpenEMR {what} answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as err:
            raise TransientUpstreamError(f"OpenEMR {what}: answer is not JSON") from err
        return body.get("data") if isinstance(body, dict) else None

    def _invalidate(self) -> None:
        with self._lock:
            self._token, self._expires = None, 0.0

    def _access_token(self) -> str:
        with self._lock:
            if self._token and time.monotonic() < self._expires - _TOKEN_MARGIN_S:
                return self._token
            body = None
            if self._refresh:
                refresh = {"grant_type": "refresh_token", "refresh_token": self._refresh}
                body = self._token_request(refresh, allow_failure=True)
            if body is None:
                body = self._token_request(
                    {
                        "grant_type": "password",
                        "username": self._user[0],
                        "password": self._user[1],
                        "user_role": "users",
                        "scope": self.scope,
                    },
                    allow_failure=False,
                )
            assert body is not None
            self._token = str(body["access_token"])
            self._refresh = body.get("refresh_token") or self._refresh
            self._expires = time.monotonic() + float(body.get("expires_in", 3600))
            return self._token

    def _token_request(self, form: dict[str, str], *, allow_failure: bool) -> dict[str, Any] | None:
        form = {**form, "client_id": self._client[0], "client_secret": self._client[1]}
        try:
            response = self.session.post(
                f"{self.base_url}/oauth2/default/token", data=form, timeout=self.timeout_s
            )
        except requests.RequestException as err:
            raise TransientUpstreamError(f"OpenEMR token: {type(err).__name__}") from err
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        if allow_failure:
            return None
        if response.status_code >= 500:
            raise TransientUpstreamError(f"OpenEMR token answered HTTP {response.status_code}")
        # Never log the form: it holds the password and the client secret.
        raise PermanentUpstreamError(
            f"OpenEMR refused the token request (HTTP {response.status_code})"
        )


# Writing to OpenEMR without ever creating a patient twice. A create whose answer was lost (a
# timeout, a dropped connection) may or may not have happened, so before any second POST the
# MRN is looked up: found, the first one landed; not found, it is safe to try again. The MRN
# (`pubpid`) is the business key that makes this idempotent.
_CREATE_ATTEMPTS = 3


def ensure_emr_patient(emr: OpenEmrClient, fields: dict[str, str]) -> dict[str, Any]:
    """The EMR's patient with `fields["pubpid"]`, created once if it does not exist."""
    mrn = fields.get("pubpid", "")
    if not mrn:
        raise PermanentUpstreamError("an EMR patient needs its MRN (pubpid)")
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        existing = emr.find_by_mrn(mrn)
        if existing is not None:
            return existing
        try:
            created = emr.create_patient(fields)
        except TransientUpstreamError as err:
            # The create may have landed: the next turn of the loop looks before posting again.
            log.warning("EMR create for an MRN lost its answer (%s); looking it up", err)
            time.sleep(0.5 * attempt)
            continue
        found = emr.get_patient(str(created.get("uuid", ""))) if created.get("uuid") else None
        return found or {**fields, **created}
    existing = emr.find_by_mrn(mrn)
    if existing is not None:
        return existing
    raise TransientUpstreamError(
        f"EMR create for MRN {mrn} did not complete after {_CREATE_ATTEMPTS} tries"
    )
