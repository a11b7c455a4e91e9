"""The Prefect UI for admins, behind the gateway (`/prefect/`), never open to anyone else.

The Prefect server itself has no users, so nginx asks the webapp before every request to
`/prefect/…` (`auth_request` → `GET /api/admin/ui-auth`):

1. An admin, logged in through the API, asks `POST /api/admin/prefect-link` for a link. It is
   signed, bound to the admin's login session, valid for five minutes and good for one use.
   The token is in the link's fragment (`/prefect-login#token=…`), which browsers never send:
   it cannot land in any log of nginx or of a proxy on the way.
2. The page at `/prefect-login` (its script, `/prefect-login.js`: the CSP allows no inline
   script) posts the token to `POST /prefect-login`, which spends it and sets a cookie scoped
   to `/prefect` (HttpOnly, SameSite=Strict, Secure when the gateway is HTTPS); the page then
   goes to the UI. Being a same-site navigation, it works from a link clicked in a mail too.
3. Each UI request is allowed while the cookie's session is open, the user active and still an
   admin. Logging out, deactivating the account or changing its role closes the UI at once.

Every refusal is audited without the token; allowed UI requests are not (a page makes dozens).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, jsonify, request
from flask_jwt_extended import current_user, get_jwt, jwt_required

from common.db import Role, User, get_engine
from webapp import accounts
from webapp.accounts import TokenType
from webapp.audit import Action
from webapp.context import audit, deny_response, web_context
from webapp.tokens import (
    ADMIN_LINK_AUDIENCE,
    ADMIN_UI_AUDIENCE,
    SessionClaims,
    TokenRejected,
    issue_session_token,
    verify_session_token,
)

bp = Blueprint("admin_ui", __name__)

COOKIE = "neuronova_admin_ui"
COOKIE_PATH = "/prefect"
LINK_TTL_S = 300  # one use; long enough to copy it from a terminal


@bp.post("/api/admin/prefect-link")
@jwt_required()
def prefect_link() -> Response | tuple[Response, int]:
    """A one-use link into the Prefect UI, for admins only."""
    user: User = current_user
    if user.role != Role.ADMIN:
        audit(Action.ADMIN_UI_LINK, 403, username=user.username, reason="not an admin")
        return deny_response(403, "not allowed"), 403
    ctx = web_context()
    token, claims = issue_session_token(
        ctx.admin_key,
        audience=ADMIN_LINK_AUDIENCE,
        username=user.username,
        sid=get_jwt()["sid"],
        ttl_s=LINK_TTL_S,
    )
    audit(Action.ADMIN_UI_LINK, 200, username=user.username)
    base = ctx.settings.gateway_url.rstrip("/")
    return jsonify(
        {
            "url": f"{base}/prefect-login#{urlencode({'token': token})}",
            "expires_at": claims.expires_at.isoformat(),
        }
    )


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>NeuroNova: Prefect UI</title>
<script src="/prefect-login.js" defer></script></head>
<body><p id="status">Opening the Prefect UI…</p></body></html>
"""

# Takes the token from the fragment (and out of the address bar and history), posts it, then
# goes to the UI; a refusal is shown as the server words it.
_LOGIN_SCRIPT = """(async () => {
  const status = document.getElementById("status");
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  history.replaceState(null, "", location.pathname);
  const answer = await fetch("/prefect-login", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({token}),
  });
  if (answer.status === 204) { location.replace("/prefect/"); return; }
  const body = await answer.json().catch(() => ({}));
  status.textContent = body.error || `refused (HTTP ${answer.status})`;
})();
"""


@bp.get("/prefect-login")
def prefect_login_page() -> Response:
    """The landing page of a link (the token stays in the fragment, in the browser)."""
    return Response(_LOGIN_PAGE, mimetype="text/html", headers={"Cache-Control": "no-store"})


@bp.get("/prefect-login.js")
def prefect_login_script() -> Response:
    return Response(_LOGIN_SCRIPT, mimetype="text/javascript")


@bp.post("/prefect-login")
def prefect_login() -> Response | tuple[Response, int]:
    """Spend a link: set the UI cookie (204); the page then goes to the UI."""
    ctx = web_context()
    body = request.get_json(silent=True)
    sent = body.get("token") if isinstance(body, dict) else None
    try:
        link = verify_session_token(
            ctx.admin_key, sent if isinstance(sent, str) else "", audience=ADMIN_LINK_AUDIENCE
        )
        _check_admin(link)
        # One use: the link's jti joins the blocklist; of two racing requests one wins.
        if not accounts.spend_once(
            ctx.database_url, link.jti, TokenType.ADMIN_LINK, None, link.expires_at
        ):
            raise TokenRejected("link already used")
    except TokenRejected as err:
        audit(Action.ADMIN_UI_LOGIN, 401, reason=err.reason)
        return deny_response(401, "link invalid, used or expired: ask for a new one"), 401
    session_ttl = ctx.settings.access_token_ttl_s
    cookie, _ = issue_session_token(
        ctx.admin_key,
        audience=ADMIN_UI_AUDIENCE,
        username=link.username,
        sid=link.sid,
        ttl_s=session_ttl,
    )
    audit(Action.ADMIN_UI_LOGIN, 200, username=link.username)
    response = Response(status=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=session_ttl,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        # From the configured address, not a header: behind TLS the cookie is always Secure.
        secure=urlsplit(ctx.settings.gateway_url).scheme == "https",
    )
    return response


@bp.get("/api/admin/ui-auth")
def ui_auth() -> Response | tuple[Response, int]:
    """nginx's question before each `/prefect/` request: 204 yes, 401/403 no."""
    ctx = web_context()
    try:
        claims = verify_session_token(
            ctx.admin_key, request.cookies.get(COOKIE, ""), audience=ADMIN_UI_AUDIENCE
        )
        _check_admin(claims)
    except TokenRejected as err:
        audit(Action.ADMIN_UI, 401, reason=err.reason)
        return deny_response(401, "log in as an admin and open a new Prefect UI link"), 401
    return Response(status=204)


def _check_admin(claims: SessionClaims) -> None:
    """The token's session is open, its user active, an admin, and the jti not spent."""
    with get_engine(web_context().database_url).connect() as connection:
        user = accounts.api_token_user(
            connection, sid=claims.sid, jti=claims.jti, username=claims.username
        )
    if user is None:
        raise TokenRejected("session closed, user inactive or token spent")
    if user.role != Role.ADMIN:
        raise TokenRejected("not an admin")
    if claims.expires_at <= datetime.now(UTC):
        raise TokenRejected("token expired")
