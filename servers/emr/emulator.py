"""An emulator of OpenEMR's Standard REST API, for the local stack and the tests.

OpenEMR cannot run on these machines (no package; its dependencies come only from Packagist),
so this follows its documented API instead: the OAuth2 password grant at
`/oauth2/default/token` (with refresh), and patients at `/apis/default/api/patient`
(list with `_limit`/`_offset`/`_sort`, read by uuid, create, update), every answer wrapped as
`{"validationErrors": [], "internalErrors": [], "data": …}`, every field a string. `pubpid` (the
MRN) is not a search filter, as upstream. It is seeded with synthetic patients, and the patient
of the sample studies. Faults are injected through `/_emulator/…` (`servers.emr.faults`).

    python -m servers.emr.emulator --port 8300 --credentials FILE --sample-patient-id MRN \
        [--patients 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Flask, Response, jsonify, request

from servers.emr.faults import Faults, add_fault_injection

DEMO_CLIENT_ID = "neuronova-demo-client"
DEMO_USERNAME = "admin"
TOKEN_TTL_S = 3600
PATIENT_FIELDS = (
    "uuid",
    "pid",
    "pubpid",
    "title",
    "fname",
    "mname",
    "lname",
    "DOB",
    "sex",
    "street",
    "postal_code",
    "city",
    "state",
    "country_code",
    "phone_contact",
    "phone_home",
    "phone_cell",
    "email",
    "status",
    "date",
)
# Synthetic names, one word each.
_FIRST = tuple(
    "Anna Ben Chloé Dmitri Eva François Grace Hiro Ines Jürgen Kofi Lena Mateo Noor Olga Pál "
    "Quinn Rosa Søren Tariq".split()
)
_LAST = tuple(
    "Andersen Baker Çelik Dubois Esposito Fischer García Hansen Ivanova Jensen Kowalski López "
    "Müller Nakamura O'Brien Petrov".split()
)


@dataclass
class EmrState:
    client_secret: str
    password: str
    # The registered API client and the user it acts as (the demo's unless told otherwise).
    client_id: str = DEMO_CLIENT_ID
    username: str = DEMO_USERNAME
    patients: dict[str, dict[str, str]] = field(default_factory=dict)  # by uuid
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (monotonic)
    refresh_tokens: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_pid: int = 1


def synthetic_patient(pid: int, rng: random.Random) -> dict[str, str]:
    """One patient with the real JSON shape: strings everywhere, '' for missing values."""
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 90 * 365))
    sex = rng.choice(["Male", "Female", "Female", "Male", "Unknown"])
    return {
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "pid": str(pid),
        "pubpid": f"NN-{pid:06d}",
        "title": "",
        "fname": rng.choice(_FIRST),
        "mname": "",
        "lname": rng.choice(_LAST),
        "DOB": birth.isoformat() if rng.random() > 0.02 else "",
        "sex": sex,
        "street": f"{rng.randrange(1, 200)} Hospital Road",
        "postal_code": f"{rng.randrange(10000, 99999)}",
        "city": "Springfield",
        "state": "",
        "country_code": "US",
        "phone_contact": "",
        "phone_home": f"555-{rng.randrange(1000, 9999)}",
        "phone_cell": "",
        "email": "",
        "status": "",
        "date": (datetime(2026, 1, 1) + timedelta(minutes=pid)).strftime("%Y-%m-%d %H:%M:%S"),
    }


def create_app(state: EmrState) -> Flask:
    app = Flask(__name__)

    def envelope(data: Any, status: int = 200) -> tuple[Response, int]:
        return jsonify({"validationErrors": [], "internalErrors": [], "data": data}), status

    def error(status: int, message: str) -> tuple[Response, int]:
        return jsonify({"error": "invalid_request", "error_description": message}), status

    add_fault_injection(app, state)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok", "patients": len(state.patients)})

    @app.post("/oauth2/default/token")
    def token() -> tuple[Response, int]:
        form = request.form
        if (
            form.get("client_id") != state.client_id
            or form.get("client_secret") != state.client_secret
        ):
            return error(401, "invalid client")
        grant = form.get("grant_type")
        if grant == "password":
            ok = (
                form.get("username") == state.username
                and form.get("password") == state.password
                and form.get("user_role") == "users"
            )
            if not ok:
                return error(401, "invalid user credentials")
        elif grant == "refresh_token":
            if form.get("refresh_token") not in state.refresh_tokens:
                return error(401, "invalid refresh token")
        else:
            return error(400, "unsupported grant_type")
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with state.lock:
            state.tokens[access] = time.monotonic() + TOKEN_TTL_S
            state.refresh_tokens.add(refresh)
        body = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": TOKEN_TTL_S,
            "refresh_token": refresh,
            "scope": form.get("scope", ""),
        }
        return jsonify(body), 200

    def authorised() -> bool:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        expiry = state.tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    @app.get("/apis/default/api/patient")
    def list_patients() -> tuple[Response, int]:
        if not authorised():
            return error(401, "invalid or expired token")
        try:
            limit = int(request.args.get("_limit", "100"))
            offset = int(request.args.get("_offset", "0"))
        except ValueError:
            return envelope([], 400)
        rows = list(state.patients.values())
        sort = request.args.get("_sort", "")
        for key in reversed([k for k in sort.split(",") if k]):
            name = key.lstrip("-")
            if name in PATIENT_FIELDS:
                numeric = name == "pid"
                rows.sort(
                    key=lambda r, n=name, num=numeric: int(r[n]) if num else r[n],  # type: ignore[misc]
                    reverse=key.startswith("-"),
                )
        for name in ("fname", "lname", "DOB", "sex", "city"):  # upstream's filters; not pubpid
            if name in request.args:
                rows = [r for r in rows if r[name] == request.args[name]]
        return envelope(rows[offset : offset + max(0, limit)])

    @app.get("/apis/default/api/patient/<puuid>")
    def read_patient(puuid: str) -> tuple[Response, int]:
        if not authorised():
            return error(401, "invalid or expired token")
        patient = state.patients.get(puuid)
        if patient is None:
            return envelope([], 404)
        return envelope(patient)

    @app.post("/apis/default/api/patient")
    def create_patient() -> tuple[Response, int]:
        if not authorised():
            return error(401, "invalid or expired token")
        body = request.get_json(silent=True) or {}
        missing = [f for f in ("fname", "lname", "DOB", "sex") if not body.get(f)]
        if missing:
            return jsonify(
                {
                    "validationErrors": {f: "required" for f in missing},
                    "internalErrors": [],
                    "data": [],
                }
            ), 400
        with state.lock:
            pid = state.next_pid
            state.next_pid += 1
            patient = {f: "" for f in PATIENT_FIELDS}
            patient.update({k: str(v) for k, v in body.items() if k in PATIENT_FIELDS})
            patient.update(uuid=str(uuid.uuid4()), pid=str(pid), date=_now())
            patient["pubpid"] = patient["pubpid"] or str(pid)
            state.patients[patient["uuid"]] = patient
        return envelope({"pid": patient["pid"], "uuid": patient["uuid"]}, 201)

    @app.put("/apis/default/api/patient/<puuid>")
    def update_patient(puuid: str) -> tuple[Response, int]:
        if not authorised():
            return error(401, "invalid or expired token")
        body = request.get_json(silent=True) or {}
        with state.lock:
            patient = state.patients.get(puuid)
            if patient is None:
                return envelope([], 404)
            patient.update(
                {
                    k: str(v)
                    for k, v in body.items()
                    if k in PATIENT_FIELDS and k not in ("uuid", "pid")
                }
            )
            patient["date"] = _now()
        return envelope(patient)

    return app


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def sample_study_patient(pid: int, rng: random.Random, mrn: str) -> dict[str, str]:
    """The patient of the sample studies (`neuronova sample`), as the hospital's EMR knows them,
    so that the demo's AI report has a patient to attach to."""
    return synthetic_patient(pid, rng) | {
        "pubpid": mrn,
        "fname": "Patient",
        "lname": "Demo",
        "DOB": "1970-01-01",
        "sex": "Unknown",
    }


def seeded_state(
    client_secret: str, password: str, patients: int, sample_patient_id: str, seed: int = 1
) -> EmrState:
    """`patients` synthetic patients (NN-000001 …) and the sample studies' patient after them."""
    state = EmrState(client_secret=client_secret, password=password)
    rng = random.Random(seed)  # noqa: S311  (synthetic demographics, not secrets)
    for pid in range(1, patients + 1):
        patient = synthetic_patient(pid, rng)
        state.patients[patient["uuid"]] = patient
    sample = sample_study_patient(patients + 1, rng, sample_patient_id)
    state.patients[sample["uuid"]] = sample
    state.next_pid = patients + 2
    return state


def main() -> None:
    parser = argparse.ArgumentParser(
        description="OpenEMR Standard API emulator (local stack, tests)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument(
        "--credentials",
        required=True,
        help="JSON file: client_secret, password (and client_id, username: the demo's if absent)",
    )
    parser.add_argument(
        "--sample-patient-id", required=True, help="MRN of the sample studies' patient"
    )
    args = parser.parse_args()
    with open(args.credentials) as handle:
        credentials = json.load(handle)
    state = seeded_state(
        credentials["client_secret"], credentials["password"], args.patients, args.sample_patient_id
    )
    state.client_id = credentials.get("client_id", DEMO_CLIENT_ID)
    state.username = credentials.get("username", DEMO_USERNAME)
    app = create_app(state)
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()
