"""The gateway tests' world: two ingested studies of two patients, a clinician allowed one of
them and a radiologist (built by the `viewing` fixture in tests/gateway/conftest.py), and how a
test logs in and asks for a viewer link through nginx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx

from common.settings import Settings
from neuronova.sample import ct_slice_dataset, head_phantom

PASSWORD = "gateway test password"


@dataclass(frozen=True)
class Viewing:
    settings: Settings
    base: str
    study_a: str
    series_a: str
    instances_a: tuple[str, ...]
    patient_a: str
    study_b: str
    series_b: str
    instances_b: tuple[str, ...]
    folder_a: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def login(self, client: httpx.Client, username: str = "cara") -> dict[str, str]:
        response = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        tokens: dict[str, str] = response.json()
        return tokens

    def link(self, client: httpx.Client, access: str, study: str | None = None) -> str:
        response = client.post(
            f"/api/studies/{study or self.study_a}/viewer-link",
            headers={"Authorization": f"Bearer {access}"},
        )
        assert response.status_code == 200, response.text
        url: str = response.json()["url"]
        return url

    def open(self, client: httpx.Client, access: str, study: str | None = None) -> str:
        """A viewer token as the link's page gets it: a link spent by `POST /view` from this
        client, whose cookie jar now holds the browser key the token is bound to."""
        response = client.post("/view", json={"token": token_of(self.link(client, access, study))})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


def token_of(url: str) -> str:
    """The one-use token in a viewer link's fragment (`…/view#token=…`)."""
    return parse_qs(urlparse(url).fragment)["token"][0]


def write_study_b(folder: Path) -> None:
    """A second patient's small study (other UIDs, other PatientID)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = "1.2.826.0.1.3680043.10.1245.999"
    for index in range(3):
        ds = ct_slice_dataset(
            head_phantom(64, 64, 0.1 * index), index, f"{root}.1", f"{root}.1.1", f"{root}.9"
        )
        ds.PatientID = "NN-TEST-B"
        ds.PatientName = "Test^B"
        ds.save_as(folder / f"B{index}.dcm", enforce_file_format=True)
