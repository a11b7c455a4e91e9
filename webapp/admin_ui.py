"""The Prefect UI for admins, behind the gateway (`/prefect/`), never open to anyone else.

The Prefect server itself has no users, so nginx asks the webapp before every request to
`/prefect/…` (`auth_request` → `GET /api/admin/ui-auth`):

1. An admin, logged in through the API, asks `POST /api/admin/prefect-link` for a link. It is
   signed, bound to the admin's login session, valid for five minutes and good for one use.
2. Opening it (`GET /prefect-login?token=…`) spends the link and sets a cookie scoped to
   `/prefect` (HttpOnly, SameSite=Strict, Secure over HTTPS), then redirects to the UI.
3. Each UI request is allowed while the cookie's session is open, the user active and still an
   admin. Logging out, deactivating the account or changing its role closes the UI at once.

Every refusal is audited without the token; allowed UI requests are not (a page makes dozens).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, redirect, request
from flask_jwt_extended import current_user, get_jwt, jwt_required
from werkzeug.wrappers import Response as WerkzeugResponse

from common.db import User, get_engine
from webapp import accounts
from webapp.context import audit, db_session, deny_response, web_context
from webapp.tokens import (
    ADMIN_LINK_AUDIENCE,
    ADMIN_UI_AUDIENCE,
    AdminClaims,
    TokenRejected,
    issue_admin_token,
    verify_admin_token,
)

bp = Blueprint("admin_ui", __name__)

COOKIE = "neuronova_admin_ui"
COOKIE_PATH = "/prefect"
UI_PATH = "/prefect/"
LINK_TTL_S = 300  # one use; long enough to copy it from a terminal


@bp.post("/api/admin/prefect-link")
@jwt_required()
def prefect_link() -> Response | tuple[Response, int]:
    """A one-use link into the Prefect UI, for admins only."""
    user: User = current_user
    if user.role != "admin":
        audit("admin-ui-link", 403, username=user.username, reason="not an admin")
        return deny_response(403, "not allowed"), 403
    ctx = web_context()
    token, claims = issue_admin_token(ctx.admin_key, audience=ADMIN_LINK_AUDIENCE,
                                      username=user.username, sid=get_jwt()["sid"],
                                      ttl_s=LINK_TTL_S)  # fmt: skip
    audit("admin-ui-link", 200, username=user.username)
    base = ctx.settings.gateway_url.rstrip("/")
    return jsonify({"url": f"{base}/prefect-login?{urlencode({'token': token})}",
                    "expires_at": claims.expires_at.isoformat()})  # fmt: skip


@bp.get("/prefect-login")
def prefect_login() -> WerkzeugResponse | tuple[Response, int]:
    """Spend a link: set the UI cookie and go to the UI."""
    ctx = web_context()
    try:
        link = verify_admin_token(ctx.admin_key, request.args.get("token", ""),
                                  audience=ADMIN_LINK_AUDIENCE)  # fmt: skip
        _check_admin(link)
        with db_session() as session:  # one use: the link's jti joins the blocklist
            user = accounts.find_user(session, link.username)
            accounts.revoke_token(session, link.jti, "admin-link", user.id if user else None,
                                  link.expires_at)  # fmt: skip
    except TokenRejected as err:
        audit("admin-ui-login", 401, reason=err.reason)
        return deny_response(401, "link invalid, used or expired: ask for a new one"), 401
    session_ttl = ctx.settings.access_token_ttl_s
    cookie, _ = issue_admin_token(ctx.admin_key, audience=ADMIN_UI_AUDIENCE,
                                       username=link.username, sid=link.sid,
                                       ttl_s=session_ttl)  # fmt: skip
    audit("admin-ui-login", 200, username=link.username)
    response = redirect(UI_PATH, code=303)
    response.set_cookie(
        COOKIE, cookie, max_age=session_ttl, path=COOKIE_PATH, httponly=True, samesite="Strict",
        secure=request.headers.get("X-Forwarded-Proto", request.scheme) == "https",
    )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/admin/ui-auth")
def ui_auth() -> Response | tuple[Response, int]:
    """nginx's question before each `/prefect/` request: 204 yes, 401/403 no."""
    ctx = web_context()
    try:
        claims = verify_admin_token(ctx.admin_key, request.cookies.get(COOKIE, ""),
                                    audience=ADMIN_UI_AUDIENCE)  # fmt: skip
        _check_admin(claims)
    except TokenRejected as err:
        audit("admin-ui", 401, reason=err.reason)
        return deny_response(401, "log in as an admin and open a new Prefect UI link"), 401
    return Response(status=204)


def _check_admin(claims: AdminClaims) -> None:
    """The token's session is open, its user active, an admin, and the jti not spent."""
    with get_engine(web_context().database_url).connect() as connection:
        user = accounts.api_token_user(connection, sid=claims.sid, jti=claims.jti,
                                       username=claims.username)  # fmt: skip
    if user is None:
        raise TokenRejected("session closed, user inactive or token spent")
    if user.role != "admin":
        raise TokenRejected("not an admin")
    if claims.expires_at <= datetime.now(UTC):
        raise TokenRejected("token expired")
