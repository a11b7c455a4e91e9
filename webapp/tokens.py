"""Signing keys, passwords and viewer-link tokens.

Two audiences, two keys: API tokens (flask-jwt-extended, audience `neuronova-api`) and viewer
tokens (audience `neuronova-viewer`, bound to one study). Both keys are derived from the one
configured secret, so a token of one kind can never verify as the other even if a claim check
were forgotten. The algorithm is pinned: nothing in a token's header chooses how it is checked.

A viewer link carries a one-use link token (`neuronova-viewer-link`); opening it gives the
browser a viewer token bound to a random key in an HttpOnly cookie (the token carries the key's
SHA-256 in its `browser` claim), so a viewer token copied out of one browser is useless in
another (see webapp/viewer.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tasks.dicom.uid import is_uid

ALGORITHM = "HS256"
ISSUER = "neuronova"
API_AUDIENCE = "neuronova-api"
VIEWER_AUDIENCE = "neuronova-viewer"
VIEWER_LINK_AUDIENCE = "neuronova-viewer-link"
# The Prefect UI behind the gateway: a one-use link, then a cookie scoped to /prefect.
ADMIN_LINK_AUDIENCE = "neuronova-admin-link"
ADMIN_UI_AUDIENCE = "neuronova-admin-ui"
# The signed-in browser's cookie (webapp/pages.py), under its own derived key.
WEB_SESSION_AUDIENCE = "neuronova-web-session"
# A signed viewer token is ~450 bytes; anything far larger is not ours and is not parsed.
MAX_TOKEN_LENGTH = 4096
# Clocks of gunicorn workers and the issuing process are one machine's, so little leeway.
LEEWAY_S = 5


_hasher = PasswordHasher()
# Verified against when the user does not exist, so that an unknown name costs as much time
# as a wrong password and the two cannot be told apart.
_DUMMY_HASH = _hasher.hash("not a password anyone has")


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose (`api`, `viewer`) derived from the configured secret."""
    return hmac.new(secret, f"neuronova-jwt-{purpose}".encode(), hashlib.sha256).digest()


def hash_password(password: str) -> str:
    """An argon2id hash (salt and parameters inside the string)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether the password matches; an unknown user (no hash) takes the same time and fails."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# A browser key: 32 random bytes, URL-safe base64 without padding (what the cookie holds).
BROWSER_KEY_LENGTH = 43


@dataclass(frozen=True)
class ViewerClaims:
    """What a verified viewer token or viewer link says (a link is bound to no browser yet)."""

    username: str
    study_instance_uid: str
    sid: str
    jti: str
    expires_at: datetime
    browser: str = ""


class TokenRejected(Exception):
    """A token that is not accepted; `reason` is safe to log (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_browser_key() -> str:
    """A fresh random key for a browser's viewer cookie."""
    return secrets.token_urlsafe(32)


def is_browser_key(value: str) -> bool:
    """Whether a cookie value has the shape of a key we made (anything else is replaced)."""
    return len(value) == BROWSER_KEY_LENGTH and all(c.isalnum() or c in "-_" for c in value)


def browser_binding(browser_key: str) -> str:
    """What a viewer token carries of its browser's key: its SHA-256, URL-safe base64."""
    digest = hashlib.sha256(browser_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def bound_to(claims: ViewerClaims, browser_key: str) -> bool:
    """Whether the cookie's key is the one the token was issued to (constant time)."""
    if not claims.browser or not is_browser_key(browser_key):
        return False
    return hmac.compare_digest(claims.browser, browser_binding(browser_key))


def issue_viewer_link(
    key: bytes, *, username: str, study_instance_uid: str, sid: str, ttl_s: int
) -> tuple[str, ViewerClaims]:
    """A signed one-use link token: it opens one study for one user within one session, once,
    in whichever browser spends it first (`webapp.viewer`)."""
    claims = _viewer_claims(username, study_instance_uid, sid, ttl_s, browser="")
    return _sign(key, VIEWER_LINK_AUDIENCE, claims, study=study_instance_uid), claims


def issue_viewer_token(
    key: bytes, *, username: str, study_instance_uid: str, sid: str, ttl_s: int, browser: str
) -> tuple[str, ViewerClaims]:
    """A signed, short-lived token that opens one study for one user within one session, in
    the browser whose key hashes to `browser` (see `browser_binding`)."""
    if not browser:
        raise ValueError("a viewer token must be bound to a browser")
    claims = _viewer_claims(username, study_instance_uid, sid, ttl_s, browser=browser)
    return _sign(key, VIEWER_AUDIENCE, claims, study=study_instance_uid, browser=browser), claims


def _viewer_claims(
    username: str, study_instance_uid: str, sid: str, ttl_s: int, *, browser: str
) -> ViewerClaims:
    if not is_uid(study_instance_uid):
        raise ValueError("not a DICOM UID")
    return ViewerClaims(
        username=username,
        study_instance_uid=study_instance_uid,
        sid=sid,
        jti=uuid.uuid4().hex,
        expires_at=_now() + timedelta(seconds=ttl_s),
        browser=browser,
    )


def verify_viewer_token(key: bytes, token: str) -> ViewerClaims:
    """The claims of a valid viewer token; TokenRejected for anything else (fails closed)."""
    payload = _decode(key, token, VIEWER_AUDIENCE, "study", "browser", kind="a viewer token")
    browser = payload.get("browser")
    if not isinstance(browser, str) or not browser:
        raise TokenRejected("invalid token claims")
    return _viewer_claims_of(payload, browser)


def verify_viewer_link(key: bytes, token: str) -> ViewerClaims:
    """The claims of a valid viewer link token; TokenRejected for anything else."""
    payload = _decode(key, token, VIEWER_LINK_AUDIENCE, "study", kind="a viewer link")
    return _viewer_claims_of(payload, "")


def _viewer_claims_of(payload: dict[str, Any], browser: str) -> ViewerClaims:
    study, sub, sid, jti = (payload.get(k) for k in ("study", "sub", "sid", "jti"))
    if not all(isinstance(v, str) and v for v in (study, sub, sid, jti)):
        raise TokenRejected("invalid token claims")
    assert isinstance(study, str) and isinstance(sub, str)  # narrowed above, for mypy
    assert isinstance(sid, str) and isinstance(jti, str)
    if not is_uid(study):
        raise TokenRejected("invalid token claims")
    return ViewerClaims(
        username=sub,
        study_instance_uid=study,
        sid=sid,
        jti=jti,
        expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
        browser=browser,
    )


@dataclass(frozen=True)
class SessionClaims:
    """What a verified session-bound token says: an admin-UI link or cookie, or the signed-in
    browser's cookie."""

    username: str
    sid: str
    jti: str
    expires_at: datetime


def issue_session_token(
    key: bytes, *, audience: str, username: str, sid: str, ttl_s: int
) -> tuple[str, SessionClaims]:
    """A signed token bound to one login session: for the admin UI a one-use link
    (ADMIN_LINK_AUDIENCE) or the cookie the link is exchanged for (ADMIN_UI_AUDIENCE); for the
    signed-in browser its cookie (WEB_SESSION_AUDIENCE)."""
    claims = SessionClaims(
        username=username,
        sid=sid,
        jti=uuid.uuid4().hex,
        expires_at=_now() + timedelta(seconds=ttl_s),
    )
    return _sign(key, audience, claims), claims


def verify_session_token(key: bytes, token: str, *, audience: str) -> SessionClaims:
    """The claims of a valid session-bound token of that audience; TokenRejected for anything
    else."""
    payload = _decode(key, token, audience, kind="a session token of this kind")
    sub, sid, jti = (payload.get(k) for k in ("sub", "sid", "jti"))
    if not (isinstance(sub, str) and isinstance(sid, str) and isinstance(jti, str)):
        raise TokenRejected("invalid token claims")
    if not (sub and sid and jti):
        raise TokenRejected("invalid token claims")
    return SessionClaims(
        username=sub, sid=sid, jti=jti, expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC)
    )


def _now() -> datetime:
    """Now, to the second (a token's times are whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def _sign(key: bytes, audience: str, claims: ViewerClaims | SessionClaims, **extra: str) -> str:
    """The signed token: the standard claims, with `extra` ones after the subject; issued now,
    valid until the claims' expiry."""
    now = _now()
    payload = {
        "iss": ISSUER,
        "aud": audience,
        "sub": claims.username,
        **extra,
        "sid": claims.sid,
        "jti": claims.jti,
        "iat": now,
        "nbf": now,
        "exp": claims.expires_at,
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"typ": "JWT"})


def _decode(key: bytes, token: str, audience: str, *claims: str, kind: str) -> dict[str, Any]:
    """The payload of a token signed with `key` for `audience`, with the standard claims and
    `claims` present; TokenRejected (saying what failed, never the token) for anything else."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("token missing or oversized")
    required = ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", *claims]
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            leeway=LEEWAY_S,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise TokenRejected("token expired") from None
    except jwt.InvalidAudienceError:
        raise TokenRejected(f"not {kind}") from None
    except jwt.PyJWTError as err:
        # The class name says what failed (signature, algorithm, format) without any token bytes.
        raise TokenRejected(f"invalid token ({type(err).__name__})") from None
    return payload
