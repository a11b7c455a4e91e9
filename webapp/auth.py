"""Login, refresh and logout (`/api/auth/…`), and the checks every API token goes through.

Every token carries the `sid` of the login session it was issued under. Logout puts the
access token's jti (and the refresh token's, when sent) on the persistent blocklist and closes
the session, which also ends the viewer links issued under it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    current_user,
    decode_token,
    get_jwt,
    jwt_required,
)
from sqlmodel import Session

from common.db import User, get_engine
from common.transactions import in_transaction
from webapp import accounts
from webapp.accounts import TokenType
from webapp.audit import Action
from webapp.context import audit, client_addr, db_session, deny_response, web_context

bp = Blueprint("auth", __name__, url_prefix="/api/auth")

# One answer for an unknown user, an inactive one and a wrong password.
BAD_CREDENTIALS = "invalid user name or password"


def _name_key(username: str) -> str:
    """Failures are counted per name without storing what was typed (it may be a password)."""
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()


@dataclass(frozen=True)
class LoginOutcome:
    """What a sign-in attempt came to: the user and their new login session, or why not."""

    user: User | None = None
    sid: str | None = None
    retry_after_s: int = 0  # > 0: too many failures, try again after this long

    @property
    def blocked(self) -> bool:
        return self.retry_after_s > 0


def attempt_login(username: str, password: str) -> LoginOutcome:
    """Check a user name and password under the login rules (per-name and per-address failure
    limits, one answer for an unknown user, an inactive one and a wrong password) and open a
    login session on success. Audited. The API (`/api/auth/login`) and the sign-in page
    (webapp/pages.py) both come here, so they follow the same rules and share the counters."""
    if len(username) > 256 or len(password) > 1024:
        audit(Action.LOGIN, 401, reason="bad credentials")
        return LoginOutcome()
    settings = web_context().settings
    key, address = _name_key(username), client_addr()
    # Every attempt is counted (committed) before its password is checked, so concurrent
    # guesses see each other and at most the allowed number get through; a success removes
    # its own row and the name's earlier failures. Audit rows are written after the
    # transactions: SQLite allows one writer at a time.
    with db_session() as session:
        attempt = accounts.record_login_failure(session, key, address)

    def check(session: Session) -> tuple[int, User | None, str | None, str | None]:
        blocked = accounts.login_blocked(
            session,
            key,
            address,
            max_per_user=settings.login_max_failures,
            max_per_client=settings.login_max_failures_per_client,
            window_s=settings.login_failure_window_s,
        )
        user = None if blocked else accounts.authenticate(session, username, password)
        known_name: str | None = None
        sid: str | None = None
        if user is None and not blocked:
            known = accounts.find_user(session, username) if len(username) <= 64 else None
            known_name = known.username if known else None
        if user is not None:
            accounts.clear_login_failures(session, key, address, attempt)
            sid = accounts.open_session(session, user, settings.refresh_token_ttl_s).sid
        return blocked, user, known_name, sid

    # Concurrent sign-ins of one name from one address delete each other's counted attempts:
    # the one that loses that race runs again (common/transactions.py).
    blocked, user, known_name, sid = in_transaction(web_context().database_url, check)
    if blocked:
        audit(Action.LOGIN, 429, reason="too many failed logins from this address")
        return LoginOutcome(retry_after_s=blocked)
    if user is None:
        # The typed name is kept only when it is a real account (never a mistyped password).
        audit(Action.LOGIN, 401, username=known_name, reason="bad credentials")
        return LoginOutcome()
    audit(Action.LOGIN, 200, username=user.username)
    return LoginOutcome(user=user, sid=sid)


@bp.post("/login")
def login() -> Response | tuple[Response, int]:
    body = request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        return deny_response(400, "JSON body with username and password required"), 400
    outcome = attempt_login(username, password)
    if outcome.blocked:
        response = deny_response(429, "too many failed logins; try again later")
        response.headers["Retry-After"] = str(outcome.retry_after_s)
        return response, 429
    user = outcome.user
    if user is None or outcome.sid is None:
        return deny_response(401, BAD_CREDENTIALS), 401
    claims = {"sid": outcome.sid, "role": user.role}
    access = create_access_token(identity=user.username, additional_claims=claims)
    refresh = create_refresh_token(identity=user.username, additional_claims=claims)
    settings = web_context().settings
    return jsonify(
        {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": settings.access_token_ttl_s,
            "user": {"username": user.username, "role": user.role},
        }
    )


@bp.post("/refresh")
@jwt_required(refresh=True)
def refresh() -> Response:
    claims = get_jwt()
    user: User = current_user
    access = create_access_token(
        identity=user.username, additional_claims={"sid": claims["sid"], "role": user.role}
    )
    audit(Action.REFRESH, 200, username=user.username)
    return jsonify(
        {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": web_context().settings.access_token_ttl_s,
        }
    )


@bp.post("/logout")
@jwt_required()
def logout() -> Response:
    claims = get_jwt()
    user: User = current_user
    tokens = [accounts.TokenToRevoke(claims["jti"], TokenType.ACCESS, _expiry(claims))]
    refresh_claims = _refresh_claims_from_body()
    if refresh_claims is not None and refresh_claims.get("sub") == user.username:
        tokens.append(
            accounts.TokenToRevoke(
                refresh_claims["jti"], TokenType.REFRESH, _expiry(refresh_claims)
            )
        )
    accounts.sign_out(web_context().database_url, claims["sid"], user.id, tokens)
    audit(Action.LOGOUT, 200, username=user.username)
    return jsonify({"status": "logged out"})


def _refresh_claims_from_body() -> dict[str, Any] | None:
    """The refresh token a client sends with logout, when it is a valid one of ours."""
    body = request.get_json(silent=True)
    token = body.get("refresh_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or len(token) > 4096:
        return None
    try:
        claims: dict[str, Any] = decode_token(token, allow_expired=True)
    except Exception:  # any decode failure: nothing to revoke
        return None
    return claims if claims.get("type") == "refresh" else None


def _expiry(claims: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(claims["exp"]), UTC)


def token_is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    """flask-jwt-extended asks this for every API token: blocklisted jti, a closed session, a
    session of another user, or an inactive user. The user found is kept for `load_user`, so a
    request costs one query, not three."""
    sid, jti, sub = payload.get("sid"), payload.get("jti"), payload.get("sub")
    if not isinstance(sid, str) or not isinstance(jti, str) or not isinstance(sub, str):
        return True  # not one of ours: deny
    with get_engine(web_context().database_url).connect() as connection:
        user = accounts.api_token_user(connection, sid=sid, jti=jti, username=sub)
    g.neuronova_token_user = user
    return user is None


def load_user(_header: dict[str, Any], payload: dict[str, Any]) -> User | None:
    """The token's user, as `token_is_revoked` found it (None makes it a 401)."""
    user: User | None = g.pop("neuronova_token_user", None)
    if user is None or user.username != payload.get("sub"):
        return None
    return user
