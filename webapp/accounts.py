"""Users, care lists, login sessions and the access policy: plain functions on a DB session.

The CLI (`neuronova users …`) and the webapp's blueprints share these, so there is one
definition of who may open what.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, delete, func, or_, text, true
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from common.db import (
    AuthSession,
    BreakGlassGrant,
    CareGrant,
    LoginFailure,
    RevokedToken,
    Role,
    Study,
    User,
    as_utc,
)
from common.transactions import in_transaction
from tasks.patients.mrn import MRN_GRAMMAR, is_mrn
from webapp.tokens import ViewerClaims, hash_password, verify_password

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 12


class TokenType(StrEnum):
    """What a blocklisted jti was (`revoked_tokens.token_type`)."""

    ACCESS = "access"
    REFRESH = "refresh"
    VIEWER = "viewer"
    ADMIN_LINK = "admin-link"
    VIEWER_LINK = "viewer-link"


# Roles that may open every study; a clinician only the studies of patients on their care list.
ALL_STUDIES_ROLES = frozenset({Role.RADIOLOGIST, Role.ADMIN})


class AccountError(ValueError):
    """A user-management request that cannot be done (the message says why)."""


def add_user(session: Session, username: str, role: str, password: str) -> User:
    """Create a user; the name must be new, the role known, the password long enough."""
    if not USERNAME_RE.fullmatch(username):
        raise AccountError("a user name is 1-64 letters, digits or . _ @ - (starting alphanumeric)")
    if role not in Role:
        raise AccountError(f"unknown role {role!r}; choose one of {', '.join(Role)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if find_user(session, username) is not None:
        raise AccountError(f"user {username!r} exists already")
    user = User(username=username, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username)).first()


def grant_patient(session: Session, username: str, patient_id: str) -> bool:
    """Put a patient on a user's care list; False when it was there already."""
    user = find_user(session, username)
    if user is None or user.id is None:
        raise AccountError(f"no user {username!r}")
    if not is_mrn(patient_id):
        raise AccountError(f"not an MRN ({MRN_GRAMMAR}): {patient_id[:70]!r}")
    if session.get(CareGrant, (user.id, patient_id)) is not None:
        return False
    session.add(CareGrant(user_id=user.id, patient_id=patient_id))
    return True


def revoke_patient(session: Session, username: str, patient_id: str) -> bool:
    """Take a patient off a user's care list; False when it was not there."""
    user = find_user(session, username)
    if user is None or user.id is None:
        raise AccountError(f"no user {username!r}")
    grant = session.get(CareGrant, (user.id, patient_id))
    if grant is None:
        return False
    session.delete(grant)
    return True


def care_list(session: Session, user: User) -> list[str]:
    return list(session.exec(select(CareGrant.patient_id).where(CareGrant.user_id == user.id)))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this password, or None (unknown, inactive and wrong look the same)."""
    user = find_user(session, username) if USERNAME_RE.fullmatch(username) else None
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None


# --------------------------------------------------------------------------- rate limit


MAX_LOCKOUT_S = 24 * 3600


def login_blocked(
    session: Session,
    username: str,
    client_addr: str,
    *,
    max_per_user: int,
    max_per_client: int,
    window_s: int,
) -> int:
    """Seconds this attempt must wait (0: go ahead), counting this attempt.

    Failures count per (name, address): a stranger elsewhere cannot lock a clinician out.
    Past `max_per_user` in the window the wait doubles with each further failure of that
    pair in the last day (window_s, 2 × window_s, … up to a day), so guessing slows down
    instead of ending; an address failing on many names is held to `max_per_client`.
    """
    now = datetime.now(UTC)
    name, addr = username[:64], client_addr[:45]
    pair = (LoginFailure.username == name, LoginFailure.client_addr == addr)
    in_window = session.exec(
        select(func.count())
        .select_from(LoginFailure)
        .where(*pair, LoginFailure.at >= now - timedelta(seconds=window_s))
    ).one()
    if in_window > max_per_user:
        in_day = session.exec(
            select(func.count())
            .select_from(LoginFailure)
            .where(*pair, LoginFailure.at >= now - timedelta(seconds=MAX_LOCKOUT_S))
        ).one()
        return min(window_s * 2 ** max(0, in_day - max_per_user - 1), MAX_LOCKOUT_S)
    per_client = session.exec(
        select(func.count())
        .select_from(LoginFailure)
        .where(
            LoginFailure.client_addr == addr, LoginFailure.at >= now - timedelta(seconds=window_s)
        )
    ).one()
    return window_s if per_client > max_per_client else 0


def record_login_failure(session: Session, username: str, client_addr: str) -> int:
    """Count an attempt as a failure until it succeeds; returns its row id."""
    row = LoginFailure(username=username[:64], client_addr=client_addr[:45])
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def clear_login_failures(session: Session, username: str, client_addr: str, attempt: int) -> None:
    """A successful login: its own attempt, and that name's earlier failures from this address,
    are forgiven (a stranger's failures elsewhere stand)."""
    session.execute(delete(LoginFailure).where(LoginFailure.id == attempt))  # type: ignore[arg-type]
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.username == username,  # type: ignore[arg-type]
            LoginFailure.client_addr == client_addr[:45],  # type: ignore[arg-type]
        )
    )


# --------------------------------------------------------------------------- sessions


def open_session(session: Session, user: User, ttl_s: int) -> AuthSession:
    """A new login session; its `sid` goes into every token issued under it."""
    assert user.id is not None
    auth = AuthSession(
        sid=secrets.token_hex(16),
        user_id=user.id,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
    )
    session.add(auth)
    return auth


def revoke_token(
    session: Session, jti: str, token_type: TokenType, user_id: int | None, expires_at: datetime
) -> None:
    """Put a jti on the blocklist (idempotent)."""
    if session.get(RevokedToken, jti) is None:
        session.add(
            RevokedToken(
                jti=jti, token_type=str(token_type), user_id=user_id, expires_at=expires_at
            )
        )


def spend_once(
    database_url: str,
    jti: str,
    token_type: TokenType,
    user_id: int | None,
    expires_at: datetime,
) -> bool:
    """Put a one-use token's jti on the blocklist in a transaction of its own: True for the one
    caller that spends it, False when it was spent already.

    Racers meet at the jti's primary key: one insert commits; the others fail (a duplicate key,
    or MariaDB 11.8's "record has changed since last read", SQLite's stale snapshot) and run
    again, and their second run finds the row (common/transactions.py)."""

    def spend(session: Session) -> bool:
        if session.get(RevokedToken, jti) is not None:
            return False
        token = RevokedToken(
            jti=jti, token_type=str(token_type), user_id=user_id, expires_at=expires_at
        )
        session.add(token)
        session.flush()
        return True

    return in_transaction(database_url, spend, also_retry=(IntegrityError,))


def close_session(session: Session, sid: str) -> None:
    """Revoke a login session: its access, refresh and viewer tokens all stop working."""
    auth = session.get(AuthSession, sid)
    if auth is not None and auth.revoked_at is None:
        auth.revoked_at = datetime.now(UTC)
        session.add(auth)


@dataclass(frozen=True)
class TokenToRevoke:
    jti: str
    token_type: TokenType
    expires_at: datetime


def sign_out(
    database_url: str, sid: str, user_id: int | None, tokens: Sequence[TokenToRevoke] = ()
) -> None:
    """End a login session and blocklist the tokens given, in a transaction of its own.

    Idempotent under concurrency: two tabs signing out at once both succeed; the one that lost
    the race runs again and finds the tokens revoked and the session closed already."""

    def end(session: Session) -> None:
        for token in tokens:
            revoke_token(session, token.jti, token.token_type, user_id, token.expires_at)
        close_session(session, sid)

    in_transaction(database_url, end, also_retry=(IntegrityError,))


# --------------------------------------------------------------------------- policy


def may_open_study(session: Session, user: User, study_instance_uid: str) -> bool:
    """Admins and radiologists open every indexed study; clinicians their patients' studies."""
    study = session.get(Study, study_instance_uid)
    if study is None or not user.active:
        return False
    if user.role in ALL_STUDIES_ROLES:
        return True
    if user.role != Role.CLINICIAN:
        return False  # an unknown role opens nothing
    return may_read_patient(session, user, study.patient_id)


def may_read_patient(session: Session, user: User, patient_id: str) -> bool:
    """The same rule as for studies, by patient: admins and radiologists read every patient,
    clinicians the patients on their care list, anyone else (inactive, unknown role) none."""
    if not user.active:
        return False
    if user.role in ALL_STUDIES_ROLES:
        return True
    if user.role != Role.CLINICIAN:
        return False
    if session.get(CareGrant, (user.id, patient_id)) is not None:
        return True
    return holds_break_glass(session, user, patient_id)


# --------------------------------------------------------------------------- break-glass


def holds_break_glass(session: Session, user: User, patient_id: str) -> bool:
    """Whether the user holds open break-glass access to this patient now."""
    until = session.exec(
        select(func.max(BreakGlassGrant.expires_at)).where(
            BreakGlassGrant.user_id == user.id, BreakGlassGrant.patient_id == patient_id
        )
    ).first()
    return _still_open(until)


def open_break_glass(
    database_url: str, user: User, patient_id: str, reason: str, minutes: int
) -> BreakGlassGrant | None:
    """Record a clinician's emergency access to a patient with studies in the archive, for
    `minutes` from now; None when the archive holds no study of that patient. Every grant asked
    for is kept, concurrent ones too: each is the record of a reason given."""
    assert user.id is not None
    user_id = user.id

    def grant(session: Session) -> BreakGlassGrant | None:
        has_study = session.exec(
            select(Study.study_instance_uid).where(Study.patient_id == patient_id)
        ).first()
        if not is_mrn(patient_id) or has_study is None:
            return None
        now = datetime.now(UTC)
        row = BreakGlassGrant(
            user_id=user_id,
            patient_id=patient_id,
            reason=reason,
            opened_at=now,
            expires_at=now + timedelta(minutes=minutes),
        )
        session.add(row)
        return row

    return in_transaction(database_url, grant)


def break_glass_patients(session: Session, user: User) -> list[str]:
    """The patients the user holds open break-glass access to now."""
    now = datetime.now(UTC)
    rows = session.exec(
        select(BreakGlassGrant.patient_id, BreakGlassGrant.expires_at).where(
            BreakGlassGrant.user_id == user.id
        )
    )
    return sorted({mrn for mrn, until in rows if as_utc(until) > now})


def studies_for(session: Session, user: User, limit: int = 500) -> list[Study]:
    """The studies the user may open, newest first."""
    condition = openable_studies(session, user)
    if condition is None:
        return []
    query = select(Study).where(condition)
    query = query.order_by(Study.study_date.desc(), Study.created_at.desc())  # type: ignore[union-attr,attr-defined]
    return list(session.exec(query.limit(limit)))


def openable_studies(session: Session, user: User) -> Any:
    """The rule of `may_open_study` as a condition on `studies`, for lists: every study for an
    active admin or radiologist; for an active clinician the care list's patients and those a
    break-glass grant holds open; None for anyone else (nothing)."""
    if not user.active:
        return None
    if user.role in ALL_STUDIES_ROLES:
        return true()
    if user.role != Role.CLINICIAN:
        return None
    care = select(CareGrant.patient_id).where(CareGrant.user_id == user.id)
    glass = break_glass_patients(session, user)
    on_list = col(Study.patient_id).in_(care)
    return or_(on_list, col(Study.patient_id).in_(glass)) if glass else on_list


def _still_open(until: datetime | str | None) -> bool:
    """A break-glass grant's end (as a plain query returns it) is still ahead."""
    if until is None:
        return False
    if isinstance(until, str):  # SQLite hands text back to a plain query
        until = datetime.fromisoformat(until)
    return as_utc(until) > datetime.now(UTC)


def _token_live(
    revoked_at: object, expires_at: datetime | str, active: object, blocked: object
) -> bool:
    """A session row of a token check: open, not expired, its user active, the jti not blocked."""
    if isinstance(expires_at, str):  # SQLite hands text back to a plain query
        expires_at = datetime.fromisoformat(expires_at)
    return (
        revoked_at is None
        and bool(active)
        and blocked is None
        and as_utc(expires_at) > datetime.now(UTC)
    )


_VIEWER_TOKEN_ALLOWED = text(
    "SELECT s.revoked_at, s.expires_at, u.active, u.role, r.jti, g.user_id,"
    " (SELECT MAX(b.expires_at) FROM break_glass_grants b"
    "  WHERE b.user_id = u.id AND b.patient_id = st.patient_id) AS glass_until"
    " FROM auth_sessions s JOIN users u ON u.id = s.user_id"
    " LEFT JOIN revoked_tokens r ON r.jti = :jti"
    " LEFT JOIN studies st ON st.study_instance_uid = :study"
    " LEFT JOIN care_grants g ON g.user_id = u.id AND g.patient_id = st.patient_id"
    " WHERE s.sid = :sid AND u.username = :sub"
)


def viewer_token_allowed(connection: Connection, claims: ViewerClaims) -> bool:
    """One query for the gate, on every image request (and for a link when it is opened): the
    token's session is open and its own, the user active, the jti not blocklisted, and the
    policy still lets the user open the study (a patient taken off a care list closes the
    study's links at once).

    Plain SQL on a pooled connection: the ORM session around the same query costs as much again.
    """
    row = connection.execute(
        _VIEWER_TOKEN_ALLOWED,
        {
            "sid": claims.sid,
            "jti": claims.jti,
            "sub": claims.username,
            "study": claims.study_instance_uid,
        },
    ).first()
    if row is None:
        return False
    revoked_at, expires_at, active, role, blocked, granted, glass_until = row
    live = _token_live(revoked_at, expires_at, active, blocked)
    if not live:
        return False
    if role in ALL_STUDIES_ROLES:
        return True
    return role == Role.CLINICIAN and (granted is not None or _still_open(glass_until))


_API_TOKEN_USER = text(
    "SELECT u.id, u.username, u.password_hash, u.role, u.active, u.created_at,"
    " s.revoked_at, s.expires_at, r.jti"
    " FROM auth_sessions s JOIN users u ON u.id = s.user_id"
    " LEFT JOIN revoked_tokens r ON r.jti = :jti"
    " WHERE s.sid = :sid AND u.username = :sub"
)


def api_token_user(connection: Connection, *, sid: str, jti: str, username: str) -> User | None:
    """One query for every API request: the token's user, when its session is open and its
    own, the user active and the jti not blocklisted; else None."""
    row = connection.execute(_API_TOKEN_USER, {"sid": sid, "jti": jti, "sub": username}).first()
    if row is None:
        return None
    user_id, name, password_hash, role, active, created_at, revoked_at, expires_at, blocked = row
    if not _token_live(revoked_at, expires_at, active, blocked):
        return None
    return User(
        id=user_id,
        username=name,
        password_hash=password_hash,
        role=role,
        active=bool(active),
        created_at=created_at,
    )


def set_password(session: Session, username: str, password: str) -> None:
    """Replace a user's password and end the user's open sessions (and their links)."""
    user = find_user(session, username)
    if user is None:
        raise AccountError(f"no user {username!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = hash_password(password)
    session.add(user)
    close_user_sessions(session, user)


def close_user_sessions(session: Session, user: User) -> int:
    """Revoke every open session of a user (a new password, a disabled account)."""
    now = datetime.now(UTC)
    open_sessions = session.exec(
        select(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at == None)  # noqa: E711
    ).all()
    for auth in open_sessions:
        auth.revoked_at = now
        session.add(auth)
    return len(open_sessions)
