"""Through nginx: what a viewer token opens, Orthanc's answers kept intact, and the attack table.

Every row of the attack table is a real HTTP request to nginx, answered by the real gate in
gunicorn (or by nginx itself); none may be a 200 or a 500.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx
import jwt
import pytest

from tasks.dicom.htj2k import decode_frame
from tests.support.orthanc import orthanc_http
from tests.support.race import race
from tests.support.viewing import Viewing, token_of
from webapp.tokens import browser_binding, derive_key, issue_viewer_token

pytestmark = pytest.mark.integration

SECURITY_HEADERS = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-resource-policy": "same-origin",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


COOKIE = "neuronova_viewer"  # the browser key's cookie on an http:// gateway
# The browser key each viewer token of this module was opened with: `_get` sends a token with
# its own browser's cookie, as that browser would.
_BROWSER_OF: dict[str, str] = {}


def _open(viewing: Viewing, client: httpx.Client, access: str, study: str | None = None) -> str:
    """A viewer token, opened from a link in `client` (one browser), its key remembered."""
    token = viewing.open(client, access, study)
    _BROWSER_OF[token] = client.cookies[COOKIE]
    return token


@pytest.fixture(scope="module")
def session_tokens(viewing: Viewing) -> dict[str, str]:
    """A clinician's live session: access and refresh tokens, a viewer token for study A and
    the key of the browser that opened it."""
    with viewing.client() as client:
        tokens = viewing.login(client)
        tokens["viewer"] = _open(viewing, client, tokens["access_token"])
        tokens["browser"] = _BROWSER_OF[tokens["viewer"]]
        tokens["link"] = token_of(viewing.link(client, tokens["access_token"]))  # not spent
    return tokens


def _get(
    viewing: Viewing, path: str, token: str | None, browser: str | None = None, **headers: str
) -> httpx.Response:
    """GET through nginx from a fresh client: with the token, and the cookie of `browser` (by
    default the browser that opened the token; none for a token this module did not open)."""
    browser = browser if browser is not None else _BROWSER_OF.get(token or "")
    with viewing.client() as client:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if browser:
            headers["Cookie"] = f"{COOKIE}={browser}"
        return client.get(path, headers=headers)


def test_a_viewer_token_opens_its_study_with_orthancs_bytes_and_types(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    v, token = viewing, session_tokens["viewer"]
    qido = _get(v, f"/dicom-web/studies?StudyInstanceUID={v.study_a}", token)
    assert qido.status_code == 200 and qido.headers["content-type"].startswith(
        "application/dicom+json"
    )
    assert [s["0020000D"]["Value"][0] for s in qido.json()] == [v.study_a]
    for header, value in SECURITY_HEADERS.items():
        assert qido.headers[header] == value

    metadata = _get(v, f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/metadata", token)
    assert metadata.status_code == 200
    assert metadata.headers["content-type"].startswith("application/dicom+json")
    assert len(metadata.json()) == len(v.instances_a)

    sop = v.instances_a[0]
    wado = _get(
        v,
        f"/wado?requestType=WADO&studyUID={v.study_a}&seriesUID={v.series_a}&objectUID={sop}&contentType=application%2Fdicom",
        token,
    )
    assert wado.status_code == 200
    assert wado.headers["content-type"] == "application/dicom"
    orthanc = orthanc_http(v.settings)
    orthanc_id = orthanc.post("/tools/lookup", content=sop).json()[0]["ID"]
    direct = orthanc.get(f"/instances/{orthanc_id}/file")
    assert wado.content == direct.content  # byte-identical HTJ2K file
    assert b"1.2.840.10008.1.2.4.201" in wado.content[:1024]

    # Frames as PS3.18 asks, whatever Orthanc's DICOMweb plugin makes of HTJ2K: one part per
    # frame with the stored codestream, labelled with the stored transfer syntax.
    frames = _get(
        v,
        f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/instances/{sop}/frames/1",
        token,
        Accept='multipart/related; type="application/octet-stream"; transfer-syntax=*',
    )
    assert frames.status_code == 200
    assert frames.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"; boundary='
    )
    [(part_type, part)] = _multipart_parts(frames)
    assert part_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.201"
    assert part == orthanc.get(f"/instances/{orthanc_id}/frames/0/raw").content
    assert part[:2] == b"\xff\x4f"  # a JPEG 2000 family codestream starts with SOC

    # A client that names no transfer syntax gets the frame decoded (PS3.18's default).
    uncompressed = _get(
        v,
        f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/instances/{sop}/frames/1",
        token,
        Accept='multipart/related; type="application/octet-stream"',
    )
    assert uncompressed.status_code == 200
    ((label, pixels),) = _multipart_parts(uncompressed)
    assert label == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    decoded = decode_frame(orthanc.get(f"/instances/{orthanc_id}/frames/0/raw").content)
    assert pixels == decoded.astype(decoded.dtype.newbyteorder("<")).tobytes()
    # A syntax the archive can neither serve nor make: 406, naming what it can.
    jpeg = _get(
        v,
        f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/instances/{sop}/frames/1",
        token,
        Accept='multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
    )
    assert jpeg.status_code == 406
    assert "1.2.840.10008.1.2.4.201" in jpeg.json()["error"]


def _multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """Each part of a multipart/related answer: its Content-Type and its bytes."""
    boundary = response.headers["content-type"].rpartition("boundary=")[2].encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        content_type = head.decode().removeprefix("Content-Type: ")
        parts.append((content_type, data[:-2]))
    return parts


def test_a_radiologist_opens_any_study_and_a_clinician_only_their_patients(
    viewing: Viewing,
) -> None:
    with viewing.client() as client:
        cara = viewing.login(client, "cara")["access_token"]
        rex = viewing.login(client, "rex")["access_token"]
        denied = client.post(
            f"/api/studies/{viewing.study_b}/viewer-link",
            headers={"Authorization": f"Bearer {cara}"},
        )
        assert denied.status_code == 403
        token_b = _open(viewing, client, rex, viewing.study_b)
    assert (
        _get(viewing, f"/dicom-web/studies/{viewing.study_b}/metadata", token_b).status_code == 200
    )


# --------------------------------------------------------------------------- the attack table


def _viewer_key(v: Viewing) -> bytes:
    return derive_key(v.settings.jwt_secret_bytes(), "viewer")


def _claims(v: Viewing, token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        token, _viewer_key(v), algorithms=["HS256"], audience="neuronova-viewer"
    )
    return claims


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _tampered(token: str, segment: int) -> str:
    parts = token.split(".")
    parts[segment] = parts[segment][:-3] + ("AAA" if not parts[segment].endswith("AAA") else "BBB")
    return ".".join(parts)


TokenMaker = Callable[[Viewing, dict[str, str]], str]

TOKENS: dict[str, TokenMaker] = {
    "alg none": lambda v, t: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{t['viewer'].split('.')[1]}.",
    "HS512 with the right key": lambda v, t: jwt.encode(_claims(v, t["viewer"]), _viewer_key(v) * 2, algorithm="HS512"),
    "signed with the API key": lambda v, t: jwt.encode(
        _claims(v, t["viewer"]), derive_key(v.settings.jwt_secret_bytes(), "api"), algorithm="HS256"),
    "header tampered": lambda v, t: _tampered(t["viewer"], 0),
    "payload tampered": lambda v, t: _tampered(t["viewer"], 1),
    "signature tampered": lambda v, t: _tampered(t["viewer"], 2),
    "expired": lambda v, t: jwt.encode(
        {**_claims(v, t["viewer"]), "exp": int((datetime.now(UTC) - timedelta(minutes=2)).timestamp())},
        _viewer_key(v), algorithm="HS256"),
    "access token": lambda v, t: t["access_token"],
    "refresh token": lambda v, t: t["refresh_token"],
    "forged session id": lambda v, t: issue_viewer_token(
        _viewer_key(v), username="cara", study_instance_uid=v.study_a, sid="0" * 32, ttl_s=60,
        browser=browser_binding(t["browser"]))[0],
    "bound to another browser": lambda v, t: issue_viewer_token(
        _viewer_key(v), username="cara", study_instance_uid=v.study_a,
        sid=_claims(v, t["viewer"])["sid"], ttl_s=60, browser=browser_binding("x" * 43))[0],
    "without a browser claim": lambda v, t: jwt.encode(
        {k: c for k, c in _claims(v, t["viewer"]).items() if k != "browser"}, _viewer_key(v),
        algorithm="HS256"),
    "a link's own token": lambda v, t: t["link"],
}  # fmt: skip


@pytest.mark.parametrize("make", TOKENS.values(), ids=TOKENS.keys())
def test_bad_tokens_are_refused(
    viewing: Viewing, session_tokens: dict[str, str], make: TokenMaker
) -> None:
    # From the browser that opened the session's token: only the token itself is wrong.
    response = _get(
        viewing,
        f"/dicom-web/studies/{viewing.study_a}/metadata",
        make(viewing, session_tokens),
        browser=session_tokens["browser"],
    )
    assert response.status_code == 401
    assert "X-Accel-Redirect" not in response.headers and b"0020000D" not in response.content


def _paths(v: Viewing) -> dict[str, tuple[str, set[int]]]:
    """Requests with study A's valid token that must not return data; the codes allowed."""
    a, b, s, sb, i, ib = (
        v.study_a,
        v.study_b,
        v.series_a,
        v.series_b,
        v.instances_a[0],
        v.instances_b[0],
    )
    deny = {403}
    deny_or_404 = {403, 404}  # nginx normalises some paths first; its 404 is a refusal too
    return {
        "study B metadata": (f"/dicom-web/studies/{b}/metadata", deny),
        "study B frames": (f"/dicom-web/studies/{b}/series/{sb}/instances/{ib}/frames/1", deny),
        "study B instance under study A's path": (f"/dicom-web/studies/{a}/series/{s}/instances/{ib}/frames/1", deny),
        "study B series under study A's path": (f"/dicom-web/studies/{a}/series/{sb}/metadata", deny),
        "QIDO without a filter": ("/dicom-web/studies", deny),
        "QIDO with study B's filter": (f"/dicom-web/studies?StudyInstanceUID={b}", deny),
        "QIDO with A and B": (f"/dicom-web/studies?StudyInstanceUID={a}&StudyInstanceUID={b}", deny),
        "WADO-URI of study B": (f"/wado?requestType=WADO&studyUID={b}&objectUID={ib}", deny),
        "WADO-URI of B's instance claiming A": (f"/wado?requestType=WADO&studyUID={a}&objectUID={ib}", deny),
        "WADO-URI without study": (f"/wado?requestType=WADO&objectUID={i}", deny),
        "traversal in the study": (f"/dicom-web/studies/{a}/../{b}/metadata", deny_or_404),
        "encoded traversal in the study": (f"/dicom-web/studies/{a}/%2e%2e/{b}/metadata", deny_or_404),
        "double-encoded traversal in the study": (f"/dicom-web/studies/{a}/%252e%252e/{b}/metadata", deny),
        "encoded slash in the study": (f"/dicom-web/studies/{a}%2F..%2F{b}/metadata", deny_or_404),
        "traversal in the series": (f"/dicom-web/studies/{a}/series/{s}/../{sb}/metadata", deny_or_404),
        "encoded traversal in the series": (f"/dicom-web/studies/{a}/series/%2e%2e%2f{sb}/metadata", deny_or_404),
        "double-encoded traversal in the series": (f"/dicom-web/studies/{a}/series/%252e%252e%252f{sb}/metadata", deny),
        "traversal in the instance": (f"/dicom-web/studies/{a}/series/{s}/instances/../../../../{b}/metadata", deny_or_404),
        "encoded traversal in the instance": (f"/dicom-web/studies/{a}/series/{s}/instances/%2e%2e%2f%2e%2e/metadata", deny_or_404),
        "double-encoded traversal in the instance": (f"/dicom-web/studies/{a}/series/{s}/instances/%252e%252e%252f/metadata", deny),
        "traversal in the frames": (f"/dicom-web/studies/{a}/series/{s}/instances/{i}/frames/../../../../../../instances", deny_or_404),
        "double-encoded traversal in the frames": (f"/dicom-web/studies/{a}/series/{s}/instances/{i}/frames/%252e%252e", deny),
        "traversal to the internal location": ("/dicom-web/../_orthanc/instances", deny_or_404),
        "encoded traversal to the internal location": ("/dicom-web/%2e%2e/_orthanc/instances", deny_or_404),
        "traversal in the WADO-URI object": (f"/wado?requestType=WADO&studyUID={a}&objectUID=../../instances", deny),
        "encoded traversal in the WADO-URI object": (f"/wado?requestType=WADO&studyUID={a}&objectUID=..%2F..%2Finstances", deny),
        "double-encoded traversal in the WADO-URI object": (f"/wado?requestType=WADO&studyUID={a}&objectUID=%252e%252e%252f", deny),
        "traversal in the WADO-URI study": (f"/wado?requestType=WADO&studyUID={a}%2F..%2F{b}&objectUID={i}", deny),
        "the internal location": ("/_orthanc/instances", {404}),
        "the internal location with a real file": (f"/_orthanc/dicom-web/studies/{a}/metadata", {404}),
        "Orthanc's REST API through the gateway": ("/instances", {404}),
        "Orthanc's tools through the gateway": ("/tools/find", {404}),
    }  # fmt: skip


def _attack_ids() -> list[str]:
    dummy = Viewing.__new__(Viewing)
    for name in ("study_a", "study_b", "series_a", "series_b", "patient_a"):
        object.__setattr__(dummy, name, "1.2")
    object.__setattr__(dummy, "instances_a", ("1.2",))
    object.__setattr__(dummy, "instances_b", ("1.2",))
    return list(_paths(dummy))


def test_a_search_by_patient_is_answered_with_the_tokens_study_only(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    """OHIF looks up the patient's other studies when a study opens: the gate answers with the
    token's study alone (never an error, never another study), audited as narrowed."""
    token, browser = session_tokens["viewer"], session_tokens["browser"]
    own = _get(
        viewing,
        f"/dicom-web/studies?00100020={viewing.patient_a}&limit=101&offset=0"
        "&fuzzymatching=false&includefield=00081030%2C00080060",
        token,
        browser,
    )
    assert own.status_code == 200
    assert {d["0020000D"]["Value"][0] for d in own.json()} == {viewing.study_a}
    other = _get(viewing, "/dicom-web/studies?PatientID=NN-TEST-B", token, browser)
    assert other.status_code in (200, 204) and (other.status_code == 204 or other.json() == [])
    from sqlmodel import select

    from common.db import AuditEvent, session_scope

    request_id = own.headers["x-request-id"]
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    rows: list[AuditEvent] = []
    while not rows and datetime.now(UTC) < deadline:  # allowed reads are written in batches
        with session_scope(viewing.settings.resolved_database_url) as session:
            rows = list(session.exec(select(AuditEvent).where(AuditEvent.request_id == request_id)))
    (row,) = rows
    assert row.status == 200 and row.action == "qido-studies"
    assert row.reason == "patient search narrowed to the token's study"


@pytest.mark.parametrize("name", _attack_ids())
def test_requests_outside_the_token_study_are_refused(
    viewing: Viewing, session_tokens: dict[str, str], name: str
) -> None:
    path, allowed = _paths(viewing)[name]
    with viewing.client() as client:
        request = client.build_request(
            "GET",
            "/",
            headers={
                "Authorization": f"Bearer {session_tokens['viewer']}",
                "Cookie": f"{COOKIE}={session_tokens['browser']}",
            },
        )
        # Send the path exactly as written: no client-side normalisation of '..' or '%2e'.
        request.url = httpx.URL(viewing.base + "/").copy_with(raw_path=path.encode())
        response = client.send(request)
    assert response.status_code in allowed, (response.status_code, response.text[:200])
    assert b"0020000D" not in response.content and b"DICM" not in response.content


def test_oversized_headers_are_refused(viewing: Viewing, session_tokens: dict[str, str]) -> None:
    path = f"/dicom-web/studies/{viewing.study_a}/metadata"
    big_token = session_tokens["viewer"] + "A" * 8000  # fits nginx's buffers: the gate refuses it
    assert _get(viewing, path, big_token, session_tokens["browser"]).status_code == 401
    # Beyond nginx's 16 KB header buffers nginx itself refuses (400), before any upstream.
    huge = _get(viewing, path, session_tokens["viewer"], **{"X-Padding": "p" * 20000})
    assert huge.status_code == 400
    many = _get(
        viewing, path, session_tokens["viewer"], **{f"X-Pad-{n}": "p" * 8000 for n in range(8)}
    )
    assert many.status_code == 400


# --------------------------------------------------------------------------- links that leak


def test_a_link_opens_once_and_its_viewer_only_in_the_browser_that_opened_it(
    viewing: Viewing,
) -> None:
    path = f"/dicom-web/studies/{viewing.study_a}/metadata"
    with viewing.client() as first, viewing.client() as second:
        access = viewing.login(first)["access_token"]
        link = token_of(viewing.link(first, access))
        opened = first.post("/view", json={"token": link})
        assert opened.status_code == 200 and "no-store" in opened.headers["cache-control"]
        cookie = opened.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        token = opened.json()["token"]
        assert opened.json()["viewer"] == f"/viewer?StudyInstanceUIDs={viewing.study_a}"
        # The link again, from the same or another browser: spent.
        assert first.post("/view", json={"token": link}).status_code == 401
        assert second.post("/view", json={"token": link}).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert first.get(path, headers=bearer).status_code == 200
        # The token replayed from another browser: no cookie, then that browser's own key.
        assert second.get(path, headers=bearer).status_code == 401
        viewing.open(second, viewing.login(second, "rex")["access_token"])
        assert second.cookies[COOKIE] != first.cookies[COOKIE]
        assert second.get(path, headers=bearer).status_code == 401
        # A second link opened in the first browser keeps its key: both viewers stay open.
        again = viewing.open(first, access)
        assert first.get(path, headers={"Authorization": f"Bearer {again}"}).status_code == 200
        assert first.get(path, headers=bearer).status_code == 200
        # The viewer token is not a link, and a link is not accepted as JSON from a form.
        assert first.post("/view", json={"token": token}).status_code == 401
        form = first.post("/view", data={"token": token_of(viewing.link(first, access))})
        assert form.status_code == 401


def test_two_browsers_racing_with_one_link_get_one_viewer(viewing: Viewing) -> None:
    """Twenty races of six browsers through nginx and gunicorn, on the stack's MariaDB (snapshot
    isolation on, as MariaDB 11.8 runs it: a lost race there was a 500)."""
    with viewing.client() as client:
        access = viewing.login(client)["access_token"]
        for _ in range(20):
            link = token_of(viewing.link(client, access))
            answers = sorted(race(6, partial(_spend_link, viewing, link)))
            assert answers == [200, 401, 401, 401, 401, 401]


def _spend_link(viewing: Viewing, link: str, _browser: int) -> int:
    with viewing.client() as browser:
        return browser.post("/view", json={"token": link}).status_code


def test_a_link_of_a_closed_session_or_a_withdrawn_study_does_not_open(viewing: Viewing) -> None:
    with viewing.client() as client:
        access = viewing.login(client)["access_token"]
        link = token_of(viewing.link(client, access))
        client.post("/api/auth/logout", headers={"Authorization": f"Bearer {access}"})
        answer = client.post("/view", json={"token": link})
    assert answer.status_code == 401 and "token" not in answer.json()
    assert COOKIE not in answer.headers.get("set-cookie", "")


def test_the_link_page_and_the_viewer_page_are_never_stored(viewing: Viewing) -> None:
    with viewing.client() as client:
        view = client.get("/view")
        viewer = client.get(f"/viewer?StudyInstanceUIDs={viewing.study_a}")
        script = client.get("/view.js")
    assert view.status_code == viewer.status_code == script.status_code == 200
    assert view.headers.get_list("cache-control") == ["no-store"]
    assert viewer.headers.get_list("cache-control") == ["no-store"]
    assert b"<script" in view.content and b"/view.js" in view.content
    assert b"<script>" not in view.content  # no inline script: the CSP allows none
    for header, value in SECURITY_HEADERS.items():
        assert viewer.headers[header] == value and view.headers[header] == value
    # OHIF's other files keep their caching: the hashed bundles a week, the config revalidated.
    with viewing.client() as client:
        config = client.get("/app-config.js")
    assert config.headers.get_list("cache-control") == ["no-cache"]


def test_logout_ends_the_viewer_link(viewing: Viewing) -> None:
    with viewing.client() as client:
        tokens = viewing.login(client)
        token = _open(viewing, client, tokens["access_token"])
        path = f"/dicom-web/studies/{viewing.study_a}/metadata"
        assert _get(viewing, path, token).status_code == 200
        out = client.post(
            "/api/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert out.status_code == 200
    assert _get(viewing, path, token).status_code == 401
    assert (
        _get(
            viewing,
            f"/wado?requestType=WADO&studyUID={viewing.study_a}&objectUID={viewing.instances_a[0]}",
            token,
        ).status_code
        == 401
    )


def test_writes_never_pass(viewing: Viewing, session_tokens: dict[str, str]) -> None:
    headers = {
        "Authorization": f"Bearer {session_tokens['viewer']}",
        "Content-Type": "application/dicom",
    }
    with viewing.client() as client:
        for method in ("POST", "PUT", "DELETE"):
            response = client.request(
                method, f"/dicom-web/studies/{viewing.study_a}", headers=headers, content=b"x"
            )
            assert response.status_code == 403, method


def test_gate_requests_are_audited_with_nginx_request_ids(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    from sqlmodel import select

    from common.db import AuditEvent, session_scope

    allowed = _get(
        viewing, f"/dicom-web/studies/{viewing.study_a}/metadata", session_tokens["viewer"]
    )
    denied = _get(
        viewing, f"/dicom-web/studies/{viewing.study_b}/metadata", session_tokens["viewer"]
    )
    ids = {allowed.headers["x-request-id"]: "allowed", denied.headers["x-request-id"]: "denied"}
    url = viewing.settings.resolved_database_url
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    rows: list[AuditEvent] = []
    while datetime.now(UTC) < deadline:  # allowed reads are written in batches
        with session_scope(url) as session:
            rows = list(
                session.exec(select(AuditEvent).where(AuditEvent.request_id.in_(list(ids))))
            )  # type: ignore[attr-defined]
        if len(rows) == 2:
            break
    assert {r.request_id: r.outcome for r in rows} == ids
    assert all(r.username == "cara" and r.client_addr == "127.0.0.1" for r in rows)
    assert all(session_tokens["viewer"] not in repr(r.model_dump()) for r in rows)


def test_the_webapps_log_line_shares_the_audit_rows_request_id_and_names_the_study(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    denied = _get(
        viewing, f"/dicom-web/studies/{viewing.study_b}/metadata", session_tokens["viewer"]
    )
    request_id = denied.headers["x-request-id"]
    log = viewing.settings.stack_dir / "webapp" / "webapp.log"
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while request_id not in log.read_text() and datetime.now(UTC) < deadline:
        time.sleep(0.05)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith('{"ts"')]
    (line,) = [x for x in lines if x.get("request_id") == request_id]
    # The study the viewer token was made for, as the audit row of this request names it.
    assert line["study_uid"] == viewing.study_a and line["service"] == "webapp"
    # The gate's root, not the path: a path can carry anything a caller typed.
    assert line["message"].startswith("GET /dicom-web/… 403 ")
    assert viewing.study_b not in line["message"]
    assert session_tokens["viewer"] not in log.read_text()


def test_the_access_log_never_holds_a_viewer_token(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    link = f"/viewer?StudyInstanceUIDs={viewing.study_a}&token={session_tokens['viewer']}"
    assert _get(viewing, link, None).status_code == 200  # OHIF's page
    log = viewing.settings.stack_dir / "nginx" / "access.log"
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while "GET /viewer?- " not in log.read_text() and datetime.now(UTC) < deadline:
        time.sleep(0.05)  # nginx writes its log line after the answer
    text = log.read_text()
    assert "GET /viewer?- " in text  # the query is never logged
    assert session_tokens["viewer"] not in text and "eyJ" not in text


def test_orthanc_errors_reach_the_browser_without_orthancs_details(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    v = viewing
    path = f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/instances/{v.instances_a[0]}/frames/999"
    response = _get(v, path, session_tokens["viewer"])
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}
    assert "Orthanc" not in response.text and "Details" not in response.text


def test_a_forged_client_address_is_not_believed(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    from sqlmodel import select

    from common.db import AuditEvent, session_scope

    # nginx overwrites X-Real-IP with the real peer, whatever the browser sends.
    denied = _get(
        viewing,
        f"/dicom-web/studies/{viewing.study_b}/metadata",
        session_tokens["viewer"],
        **{"X-Real-IP": "10.6.6.6"},
    )
    with session_scope(viewing.settings.resolved_database_url) as session:
        row = session.exec(
            select(AuditEvent).where(AuditEvent.request_id == denied.headers["x-request-id"])
        ).one()
    assert row.client_addr == "127.0.0.1"


# --------------------------------------------------------------------------- the patient boundary


def test_what_the_index_does_not_place_in_the_study_is_in_no_answer(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    """Instances posted straight into Orthanc under study A's StudyInstanceUID (another
    patient's file in A's series, and an unverified series of A's patient) are not indexed:
    no search, series list or metadata through the gate shows them, though Orthanc does."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    v, token = viewing, session_tokens["viewer"]
    orthanc = orthanc_http(v.settings)
    a_id = orthanc.post("/tools/lookup", content=v.instances_a[0]).json()[0]["ID"]
    template = orthanc.get(f"/instances/{a_id}/file").content

    def post_variant(**changes: str) -> tuple[str, str]:
        ds = dcmread(BytesIO(template))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        stored = orthanc.post("/instances", content=out.getvalue()).json()
        return str(ds.SOPInstanceUID), stored["ID"]

    def gated(path: str) -> list[dict]:
        response = _get(v, path, token)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("application/dicom+json")
        return response.json()

    def values(datasets: list[dict], tag: str) -> set[str]:
        return {ds[tag]["Value"][0] for ds in datasets if tag in ds}

    metadata = (
        f"/dicom-web/studies/{v.study_a}/metadata",
        f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/metadata",
    )
    impostor_sop, impostor_id = post_variant(PatientID="SOMEONE-ELSE", PatientName="Other^Person")
    unverified_series = generate_uid()
    unverified_sop, unverified_id = post_variant(SeriesInstanceUID=unverified_series)
    try:
        # Orthanc itself mixes them in: two studies under A's UID, a second series.
        direct = orthanc.get("/dicom-web/studies", params={"StudyInstanceUID": v.study_a})
        assert len(direct.json()) == 2

        studies = gated(f"/dicom-web/studies?StudyInstanceUID={v.study_a}")
        assert len(studies) == 1 and values(studies, "00100020") == {v.patient_a}
        series = gated(f"/dicom-web/studies/{v.study_a}/series")
        assert values(series, "0020000E") == {v.series_a}
        for path in (
            f"/dicom-web/studies/{v.study_a}/series/{v.series_a}/instances",
            f"/dicom-web/studies/{v.study_a}/instances",
        ):
            datasets = gated(path)
            assert values(datasets, "00080018") == set(v.instances_a), path
            assert values(datasets, "00100020") <= {v.patient_a}, path
        # Orthanc's metadata look-up fails on a UID it holds twice (two patients' studies):
        # until the HTJ2K check takes the impostor out, the gate fails closed, never mixes.
        for path in metadata:
            response = _get(v, path, token)
            if response.status_code != 404:
                assert values(gated(path), "00080018") == set(v.instances_a), path
        # Whole series and study retrieves (Orthanc's own answer, relayed): only the index's.
        for path in (
            f"/dicom-web/studies/{v.study_a}",
            f"/dicom-web/studies/{v.study_a}/series/{v.series_a}",
        ):
            answer = _get(
                v,
                path,
                token,
                Accept='multipart/related; type="application/dicom"; transfer-syntax=*',
            )
            assert answer.status_code == 200, path
            sops = {
                str(dcmread(BytesIO(part)).SOPInstanceUID) for _, part in _multipart_parts(answer)
            }
            assert sops == set(v.instances_a), path
        for sop, series_uid in ((impostor_sop, v.series_a), (unverified_sop, unverified_series)):
            instance = f"/dicom-web/studies/{v.study_a}/series/{series_uid}/instances/{sop}"
            for suffix in ("/metadata", "", "/frames/1"):
                assert _get(v, instance + suffix, token).status_code == 403, suffix
            wado = f"/wado?requestType=WADO&studyUID={v.study_a}&objectUID={sop}"
            assert _get(v, wado, token).status_code == 403
    finally:
        for orthanc_id in (impostor_id, unverified_id):
            orthanc.delete(f"/instances/{orthanc_id}")
    for path in metadata:  # the impostor gone, the study's metadata is whole again
        assert values(gated(path), "00080018") == set(v.instances_a), path


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:80", "127.0.0.2"])
def test_a_host_the_gateway_is_not_gets_nothing(viewing: Viewing, host: str) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own Host."""
    for path in ("/healthz", "/api/studies", "/dicom-web/studies", "/"):
        response = httpx.get(viewing.base + path, headers={"Host": host}, timeout=10)
        assert response.status_code == 421, (host, path)
        assert response.content == b"" or b"421" in response.content


def test_a_flood_gets_429_from_nginx_before_the_webapp(viewing: Viewing) -> None:
    """The API's per-address limit (50/s, burst 200) answered by nginx; normal use untouched;
    the refusals write no request line (here, an MRN in the query) to nginx's logs."""
    import re
    import shutil
    import subprocess

    assert shutil.which("wrk"), "wrk is installed by `make system`"
    mrn = "NN-FLOOD-0001"
    out = subprocess.run(
        ["wrk", "-t2", "-c16", "-d2s", f"{viewing.base}/api/health?00100020={mrn}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert refused is not None and int(refused.group(1)) > 0, out
    assert total - int(refused.group(1)) <= 200 + 50 * 3, out  # burst + rate over the run
    time.sleep(5)  # the bucket refills for the tests that follow
    assert httpx.get(f"{viewing.base}/api/health", timeout=10).status_code == 200
    logs = viewing.settings.stack_dir / "nginx"
    assert " 429 " in (logs / "access.log").read_text()  # each refusal is logged, without query
    assert all(mrn not in (logs / name).read_text() for name in ("access.log", "error.log"))


def test_the_access_log_holds_no_token_in_any_case_or_count_and_no_mrn(
    viewing: Viewing, session_tokens: dict[str, str]
) -> None:
    token = session_tokens["viewer"]
    twice = f"/viewer?StudyInstanceUIDs={viewing.study_a}&Token={token}&x=1&TOKEN={token}"
    assert _get(viewing, twice, None).status_code == 200
    with viewing.client() as client:
        access = viewing.login(client, "rex")["access_token"]
        client.get(
            f"/api/patients/{viewing.patient_a}", headers={"Authorization": f"Bearer {access}"}
        )
    log = viewing.settings.stack_dir / "nginx" / "access.log"
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while "/api/patients/<mrn>" not in log.read_text() and datetime.now(UTC) < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert "/api/patients/<mrn>" in text
    assert token not in text and "eyJ" not in text
    assert viewing.patient_a not in text  # nor in a search's filters (the attack table's)
