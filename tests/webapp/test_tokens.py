"""Viewer tokens and links: what verifies, and every way a forged or stale one is refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from webapp.tokens import (
    MAX_TOKEN_LENGTH,
    TokenRejected,
    bound_to,
    browser_binding,
    derive_key,
    hash_password,
    issue_viewer_link,
    issue_viewer_token,
    new_browser_key,
    verify_password,
    verify_viewer_link,
    verify_viewer_token,
)

KEY = derive_key(b"s" * 48, "viewer")
STUDY = "1.2.826.0.1.3680043.10.1245.1"
BROWSER = new_browser_key()


def _token(**overrides: object) -> str:
    token, _ = issue_viewer_token(
        KEY,
        username="alice",
        study_instance_uid=STUDY,
        sid="s1",
        ttl_s=60,
        browser=browser_binding(BROWSER),
    )
    if not overrides:
        return token
    payload = jwt.decode(token, KEY, algorithms=["HS256"], audience="neuronova-viewer")
    payload.update(overrides)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, KEY, algorithm="HS256")


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_viewer_token_verifies_with_its_claims() -> None:
    claims = verify_viewer_token(KEY, _token())
    assert (claims.username, claims.study_instance_uid, claims.sid) == ("alice", STUDY, "s1")
    assert len(claims.jti) == 32
    assert timedelta(seconds=55) < claims.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    assert bound_to(claims, BROWSER)


def test_a_viewer_token_is_bound_to_its_browsers_key_only() -> None:
    claims = verify_viewer_token(KEY, _token())
    assert not bound_to(claims, new_browser_key())
    assert not bound_to(claims, "")
    assert not bound_to(claims, BROWSER + "x")  # not a key's shape
    assert not bound_to(verify_viewer_link(KEY, _link()), BROWSER)  # a link binds nothing
    with pytest.raises(ValueError):
        issue_viewer_token(
            KEY, username="a", study_instance_uid=STUDY, sid="s", ttl_s=60, browser=""
        )


def _link() -> str:
    return issue_viewer_link(KEY, username="alice", study_instance_uid=STUDY, sid="s1", ttl_s=60)[0]


def test_a_link_and_a_viewer_token_never_pass_for_each_other() -> None:
    link = verify_viewer_link(KEY, _link())
    assert (link.username, link.study_instance_uid, link.browser) == ("alice", STUDY, "")
    with pytest.raises(TokenRejected):
        verify_viewer_token(KEY, _link())
    with pytest.raises(TokenRejected):
        verify_viewer_link(KEY, _token())


def _alg_none() -> str:
    _header, payload, _ = _token().split(".")
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."


def _tamper(segment: int) -> str:
    parts = _token().split(".")
    raw = parts[segment]
    parts[segment] = raw[:-2] + ("AA" if raw[-2:] != "AA" else "BB")
    return ".".join(parts)


def _other_study_payload_same_signature() -> str:
    header, payload, signature = _token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["study"] = "1.2.3.4"
    return f"{header}.{_b64(claims)}.{signature}"


REJECTED = {
    "alg none": _alg_none,
    "HS512 with the right key (algorithm not pinned one)": lambda: jwt.encode(
        jwt.decode(_token(), KEY, algorithms=["HS256"], audience="neuronova-viewer"),
        KEY,
        algorithm="HS512",
    ),
    "signed with another key": lambda: jwt.encode(
        jwt.decode(_token(), KEY, algorithms=["HS256"], audience="neuronova-viewer"),
        b"x" * 32,
        algorithm="HS256",
    ),
    "header tampered": lambda: _tamper(0),
    "payload tampered": lambda: _tamper(1),
    "signature tampered": lambda: _tamper(2),
    "payload swapped, signature kept": _other_study_payload_same_signature,
    "expired": lambda: _token(exp=int((datetime.now(UTC) - timedelta(minutes=5)).timestamp())),
    "not yet valid": lambda: _token(
        nbf=int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
    ),
    "API audience": lambda: _token(aud="neuronova-api"),
    "no audience": lambda: _token(aud=None),
    "other issuer": lambda: _token(iss="someone-else"),
    "no study claim": lambda: _token(study=None),
    "study claim not a UID": lambda: _token(study="1.2.3/../4"),
    "no session claim": lambda: _token(sid=None),
    "no browser claim": lambda: _token(browser=None),
    "empty browser claim": lambda: _token(browser=""),
    "link audience": lambda: _token(aud="neuronova-viewer-link"),
    "no expiry": lambda: _token(exp=None),
    "empty": lambda: "",
    "garbage": lambda: "not.a.token",
    "oversized": lambda: "a" * (MAX_TOKEN_LENGTH + 1),
}


@pytest.mark.parametrize("make", REJECTED.values(), ids=REJECTED.keys())
def test_forged_or_stale_viewer_tokens_are_rejected(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TokenRejected) as err:
        verify_viewer_token(KEY, make())
    assert "eyJ" not in err.value.reason  # the reason never quotes the token


def test_a_token_for_the_api_key_does_not_verify_as_a_viewer_token() -> None:
    api_key = derive_key(b"s" * 48, "api")
    assert api_key != KEY
    token, _ = issue_viewer_token(
        api_key, username="a", study_instance_uid=STUDY, sid="s", ttl_s=60, browser="b"
    )
    with pytest.raises(TokenRejected):
        verify_viewer_token(KEY, token)


def test_passwords_hash_with_argon2_and_verify() -> None:
    hashed = hash_password("a long enough secret")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "a long enough secret")
    assert not verify_password(hashed, "a long enough secreT")
    assert not verify_password(None, "a long enough secret")
    assert not verify_password("not a hash", "x")
