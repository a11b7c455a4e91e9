"""Opening a viewer link: one use, then bound to the browser that opened it.

A link (`POST /api/studies/<uid>/viewer-link`, webapp/links.py) is `/view#token=…`: the token
is in the fragment, which browsers never send, so it reaches no log, no proxy and no Referer.

1. The page at `/view` (its script `/view.js`: the CSP allows no inline script) takes the token
   out of the address bar and posts it to `POST /view`.
2. `POST /view` spends it: the link's jti joins the blocklist in a transaction of its own, so of
   two browsers racing with one link exactly one wins. The link's session must still be open,
   its user active and the study still allowed. The browser gets a random key in an HttpOnly,
   SameSite=Strict cookie (kept when it already has one, so its other viewer tabs keep
   working), and a viewer token that carries the key's SHA-256.
3. The page keeps the viewer token in the tab's sessionStorage and opens OHIF on the study;
   our OHIF configuration (nginx/ohif-app-config.js) sends it as `Authorization: Bearer` on
   the gate's paths only. The token never appears in an address.
4. The gate (webapp/gate.py) accepts a viewer token only with the cookie whose key it carries:
   a token copied out of the browser (a screenshot of the console, a shared HAR file) opens
   nothing elsewhere.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, jsonify, request
from sqlmodel import col, select

from common.db import InferenceResult, Instance, get_engine, session_scope
from common.settings import Settings
from tasks.dicom.uid import is_uid
from webapp import accounts
from webapp.accounts import TokenType
from webapp.audit import Action
from webapp.context import audit, deny_response, web_context
from webapp.tokens import (
    TokenRejected,
    browser_binding,
    is_browser_key,
    issue_viewer_token,
    new_browser_key,
    verify_viewer_link,
)

bp = Blueprint("viewer", __name__)

# Over TLS the cookie takes the `__Host-` prefix: browsers then refuse it unless it is Secure,
# host-only and for the whole path, so no other site (another port, a subdomain) can plant a
# key of its own choosing in the browser.
_COOKIE = "neuronova_viewer"
SESSION_STORAGE_KEY = "neuronova.viewer"


def browser_cookie_name(settings: Settings) -> str:
    """The name of the cookie holding the browser's key, for this gateway's address."""
    return f"__Host-{_COOKIE}" if _https(settings) else _COOKIE


def _https(settings: Settings) -> bool:
    # From the configured address, not a header: behind TLS the cookie is always Secure.
    return urlsplit(settings.gateway_url).scheme == "https"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>NeuroNova: opening the study</title>
<meta name="referrer" content="no-referrer">
<script src="/view.js" defer></script></head>
<body><main><p id="status" role="status">Opening the study…</p></main></body></html>
"""

# Takes the token out of the fragment (and the address bar) before anything else, spends it,
# keeps the viewer token in this tab only, then opens OHIF; a refusal is shown as worded.
_SCRIPT = """(async () => {
  const status = document.getElementById("status");
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token") || "";
  const sop = fragment.get("sop") || null;
  history.replaceState(null, "", location.pathname);
  if (!token) { status.textContent = "This link has no token: ask for a new link."; return; }
  const answer = await fetch("/view", {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({token, sop}),
  });
  const body = await answer.json().catch(() => ({}));
  if (answer.status !== 200) {
    status.textContent = body.error || `refused (HTTP ${answer.status})`;
    return;
  }
  sessionStorage.setItem("@KEY@", JSON.stringify({token: body.token, study: body.study}));
  location.replace(body.viewer);
})();
""".replace("@KEY@", SESSION_STORAGE_KEY)


@bp.get("/view")
def view_page() -> Response:
    """The landing page of a viewer link (the token stays in the fragment, in the browser)."""
    return Response(_PAGE, mimetype="text/html", headers={"Cache-Control": "no-store"})


@bp.get("/view.js")
def view_script() -> Response:
    return Response(_SCRIPT, mimetype="text/javascript", headers={"Cache-Control": "no-cache"})


@bp.post("/view")
def open_link() -> Response | tuple[Response, int]:
    """Spend a viewer link: set the browser's key cookie and answer a viewer token bound to it."""
    ctx = web_context()
    body = request.get_json(silent=True)  # JSON only: a cross-origin form cannot post here
    sent = body.get("token") if isinstance(body, dict) else None
    slice_wanted = body.get("sop") if isinstance(body, dict) else None
    username = study = None
    try:
        link = verify_viewer_link(ctx.viewer_key, sent if isinstance(sent, str) else "")
        username, study = link.username, link.study_instance_uid
        with get_engine(ctx.database_url).connect() as connection:
            allowed = accounts.viewer_token_allowed(connection, link)
        if not allowed:
            raise TokenRejected("link used, session ended or study no longer allowed")
        if not accounts.spend_once(
            ctx.database_url, link.jti, TokenType.VIEWER_LINK, None, link.expires_at
        ):
            raise TokenRejected("link already used")
    except TokenRejected as err:
        audit(Action.VIEWER_OPEN, 401, username=username, study=study, reason=err.reason)
        return deny_response(401, "link invalid, used or expired: ask for a new one"), 401
    cookie_name = browser_cookie_name(ctx.settings)
    browser_key = request.cookies.get(cookie_name, "")
    if not is_browser_key(browser_key):
        browser_key = new_browser_key()
    token, claims = issue_viewer_token(
        ctx.viewer_key,
        username=link.username,
        study_instance_uid=link.study_instance_uid,
        sid=link.sid,
        ttl_s=ctx.settings.viewer_token_ttl_s,
        browser=browser_binding(browser_key),
    )
    audit(Action.VIEWER_OPEN, 200, username=link.username, study=link.study_instance_uid)
    response = jsonify(
        {
            "token": token,
            "study": link.study_instance_uid,
            "viewer": viewer_address(
                ctx.database_url,
                link.study_instance_uid,
                slice_wanted if isinstance(slice_wanted, str) else None,
            ),
            "expires_at": claims.expires_at.isoformat(),
        }
    )
    response.headers["Cache-Control"] = "no-store"
    # A session cookie (no Max-Age): it ends with the browser; each token expires on its own.
    response.set_cookie(
        cookie_name,
        browser_key,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_https(ctx.settings),
    )
    return response


def viewer_address(database_url: str, study_uid: str, wanted_sop: str | None = None) -> str:
    """OHIF's address for the study: on the slice asked for (a lesion's key slice, from the
    review panel) when it is one of the study's; else on the AI's key image (the slice with
    the largest lesion area of the reading that found the most) when it has one; OHIF's
    hanging protocol (nginx/ohif-app-config.js) opens the middle slice otherwise."""
    params = {"StudyInstanceUIDs": study_uid}
    with session_scope(database_url) as session:
        if wanted_sop and is_uid(wanted_sop):
            instance = session.get(Instance, wanted_sop)
            if instance is not None and instance.study_instance_uid == study_uid:
                params["initialSOPInstanceUID"] = wanted_sop
                return "/viewer?" + urlencode(params)
        reading = session.exec(
            select(InferenceResult)
            .where(
                InferenceResult.study_instance_uid == study_uid,
                col(InferenceResult.key_sop_instance_uid).is_not(None),
            )
            .order_by(col(InferenceResult.lesion_volume_ml).desc())
        ).first()
    if reading is not None and reading.key_sop_instance_uid:
        params["initialSOPInstanceUID"] = reading.key_sop_instance_uid
    return "/viewer?" + urlencode(params)
