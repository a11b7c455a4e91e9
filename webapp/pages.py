"""The clinician's front door: the sign-in page at `/`, the worklist, opening a study, sign-out.

Server-rendered (Jinja templates in webapp/templates, our own CSS in webapp/static); no script
is needed to sign in, search or open a study.

The signed-in browser holds one cookie: a signed token (its own derived key and audience) that
names the login session it was opened under, HttpOnly, SameSite=Strict, Secure with the
`__Host-` prefix behind TLS. Every request checks that session as the API does (open, its user
active, not expired): signing out, an admin ending the user's sessions or a password change ends
the page, the viewer links opened from it and the viewers those links opened, at once.

Every form carries a CSRF token: for the worklist's forms an HMAC of the login session, for the
sign-in form an HMAC of a random value in a short-lived cookie of its own (so a page of another
site cannot sign a browser into its own account either). A form post that says it comes from
another origin is refused before anything else. Refusals are audited without the token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from hashlib import sha256
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, g, render_template, request
from sqlmodel import col, select

from common.db import BreakGlassGrant, Role, User, as_utc, get_engine
from tasks.dicom.uid import is_uid
from webapp import accounts
from webapp.audit import Action
from webapp.auth import BAD_CREDENTIALS, attempt_login
from webapp.context import audit, db_session, web_context
from webapp.readings import give_verdict, study_readings
from webapp.tokens import (
    WEB_SESSION_AUDIENCE,
    SessionClaims,
    TokenRejected,
    issue_session_token,
    issue_viewer_link,
    verify_session_token,
)
from webapp.worklist import WorklistFilter, worklist_page, worklist_row

bp = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/worklist/static",
)

_SESSION_COOKIE = "neuronova_session"
_SIGNIN_COOKIE = "neuronova_signin"
SIGNIN_COOKIE_TTL_S = 1800  # a sign-in form left open longer is shown again, with a new token

# Our pages run no inline script or style and talk to no one but us; nginx adds its own
# (wider, for OHIF) policy at the server level, and a browser enforces both.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

# --------------------------------------------------------------------------- cookies and tokens


def _https() -> bool:
    # From the configured address, not a header: behind TLS the cookies are always Secure.
    return urlsplit(web_context().settings.gateway_url).scheme == "https"


def session_cookie_name() -> str:
    """`__Host-` behind TLS: browsers then refuse the cookie unless it is Secure, host-only and
    for the whole path, so no other site (a subdomain, another port) can plant one."""
    return f"__Host-{_SESSION_COOKIE}" if _https() else _SESSION_COOKIE


def _signin_cookie_name() -> str:
    return f"__Host-{_SIGNIN_COOKIE}" if _https() else _SIGNIN_COOKIE


def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=_https()
    )


def _see_other(location: str) -> Response:
    """303: after a form post the browser GETs the next page (a reload posts nothing again)."""
    return Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _mac(purpose: str, value: str) -> str:
    message = f"{purpose}:{value}".encode()
    return hmac.new(web_context().csrf_key, message, sha256).hexdigest()


def csrf_token(sid: str) -> str:
    """The CSRF token of a login session's forms (the same for every form of the session)."""
    return _mac("session", sid)


def signed_in() -> tuple[User, SessionClaims] | None:
    """The browser's user and session claims, when its cookie names an open login session of
    an active user; None for anything else (no cookie, forged, expired, signed out)."""
    if "neuronova_page_user" in g:
        found: tuple[User, SessionClaims] | None = g.neuronova_page_user
        return found
    found = None
    ctx = web_context()
    try:
        cookie = request.cookies.get(session_cookie_name(), "")
        claims = verify_session_token(ctx.web_key, cookie, audience=WEB_SESSION_AUDIENCE)
    except TokenRejected:
        claims = None
    if claims is not None and claims.expires_at > datetime.now(UTC):
        with get_engine(ctx.database_url).connect() as connection:
            user = accounts.api_token_user(
                connection, sid=claims.sid, jti=claims.jti, username=claims.username
            )
        found = (user, claims) if user is not None else None
    g.neuronova_page_user = found
    return found


def _from_our_origin() -> bool:
    """A form post says where it comes from: Sec-Fetch-Site, which every current browser sends
    (our pages' `Referrer-Policy: no-referrer` makes their Origin `null`), else Origin. Anything
    but this gateway's own origin is refused; a client that sends neither is no browser and has
    no ambient cookie to abuse (the CSRF token is still required)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in {"same-origin", "none"}
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    gateway = urlsplit(web_context().settings.gateway_url)
    return origin == f"{gateway.scheme}://{gateway.netloc}"


def _page(template: str, code: int = 200, **values: Any) -> Response:
    return Response(render_template(template, **values), status=code, mimetype="text/html")


def _refuse(status: int, reason: str, username: str | None = None) -> Response:
    audit(Action.PAGE, status, username=username, reason=reason)
    message = "This form has expired or did not come from us."
    return _page("refused.html", status, status=status, message=message)


# A signed-in page's view: called with the browser's user and session claims.
PageView = Callable[[User, SessionClaims], Response]


def signed_in_page(view: PageView) -> Callable[[], Response]:
    """For the signed-in pages: the view gets the user and session; a browser that is not
    signed in goes to the sign-in page."""

    @wraps(view)
    def checked() -> Response:
        found = signed_in()
        if found is None:
            return _see_other("/")
        return view(*found)

    return checked


def form_post(view: PageView) -> Callable[[], Response]:
    """For the signed-in pages' forms: a session, our origin, and the session's CSRF token;
    else a 403 page (or the sign-in page, for a browser that is not signed in)."""

    @signed_in_page
    @wraps(view)
    def checked(user: User, claims: SessionClaims) -> Response:
        if not _from_our_origin():
            return _refuse(403, "form posted from another origin", user.username)
        sent = request.form.get("csrf", "")
        if not hmac.compare_digest(sent, csrf_token(claims.sid)):
            return _refuse(403, "missing or wrong CSRF token", user.username)
        return view(user, claims)

    return checked


@bp.after_request
def _page_headers(response: Response) -> Response:
    """Our pages are never stored (they name patients) and run under a strict policy."""
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


# --------------------------------------------------------------------------- sign-in


def _signin_page(status: int = 200, error: str = "", username: str = "") -> Response:
    nonce = secrets.token_urlsafe(32)
    response = _page(
        "signin.html", status, csrf=_mac("signin", nonce), error=error, username=username
    )
    _set_cookie(response, _signin_cookie_name(), nonce, SIGNIN_COOKIE_TTL_S)
    return response


@bp.get("/")
def signin_page() -> Response:
    """The gateway's root: the sign-in form, or the worklist for a browser signed in already."""
    if signed_in() is not None:
        return _see_other("/worklist")
    return _signin_page()


@bp.post("/")
def sign_in() -> Response:
    """The sign-in form: the same rules as `/api/auth/login` (webapp.auth.attempt_login); on
    success the session cookie, then the worklist."""
    nonce = request.cookies.get(_signin_cookie_name(), "")
    sent = request.form.get("csrf", "")
    if not _from_our_origin():
        return _refuse(403, "sign-in posted from another origin")
    if not nonce or not hmac.compare_digest(sent, _mac("signin", nonce)):
        # An old tab or a forged form: show a fresh form rather than a dead end.
        audit(Action.PAGE, 403, reason="sign-in form without its CSRF token")
        return _signin_page(403, "The sign-in form had expired. Please sign in again.")
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    if not username or not password:
        return _signin_page(400, "Enter your user name and password.", username[:64])
    outcome = attempt_login(username, password)
    if outcome.blocked:
        response = _signin_page(429, "Too many failed sign-ins. Try again later.", username[:64])
        response.headers["Retry-After"] = str(outcome.retry_after_s)
        return response
    if outcome.user is None or outcome.sid is None:
        return _signin_page(401, BAD_CREDENTIALS.capitalize() + ".", username[:64])
    ttl = web_context().settings.refresh_token_ttl_s  # the login session's own lifetime
    token, _ = issue_session_token(
        web_context().web_key,
        audience=WEB_SESSION_AUDIENCE,
        username=outcome.user.username,
        sid=outcome.sid,
        ttl_s=ttl,
    )
    response = _see_other("/worklist")
    _set_cookie(response, session_cookie_name(), token, ttl)
    response.delete_cookie(_signin_cookie_name(), path="/", secure=_https(), samesite="Strict")
    return response


# --------------------------------------------------------------------------- worklist


@bp.get("/worklist")
@signed_in_page
def worklist(user: User, claims: SessionClaims) -> Response:
    """The user's studies under the search in the address (mrn, name, from, to, page)."""
    wanted = WorklistFilter.from_args(request.args)
    with db_session() as session:
        page = worklist_page(session, user, wanted)
    audit(Action.WORKLIST, 200, username=user.username, now=False)
    return _page(
        "worklist.html",
        user=user,
        csrf=csrf_token(claims.sid),
        wanted=wanted,
        page=page,
        previous_url=_page_url(wanted, page.page - 1) if page.page > 1 else "",
        next_url=_page_url(wanted, page.page + 1) if page.has_next else "",
    )


@bp.get("/worklist/row")
def worklist_row_fragment() -> Response:
    """One study's row as the worklist renders it, for the page's live update after an alert
    (`?study=UID`); 404 for a study the user may not open, exactly as for an unknown one."""
    found = signed_in()
    if found is None:
        return Response("sign in again", status=401, mimetype="text/plain")
    user, claims = found
    study = request.args.get("study", "")
    row = None
    if is_uid(study):
        with db_session() as session:
            row = worklist_row(session, user, study)
    if row is None:
        return Response("no such study", status=404, mimetype="text/plain")
    return _page("_row.html", row=row, csrf=csrf_token(claims.sid))


def _page_url(wanted: WorklistFilter, page: int) -> str:
    return "/worklist?" + urlencode(wanted.query_args(page))


@bp.post("/worklist/open")
@form_post
def open_study(user: User, claims: SessionClaims) -> Response:
    """A worklist row's Open (or the review panel's "Open on this lesion", which names the
    slice in `sop`): a one-use viewer link for this browser's session, followed at once
    (webapp/viewer.py spends it, binds the viewer to this browser and opens that slice when
    it is one of the study's)."""
    study = request.form.get("study", "")
    sop = request.form.get("sop", "")
    with db_session() as session:
        allowed = is_uid(study) and accounts.may_open_study(session, user, study)
    if not allowed:
        # Unknown and forbidden studies get the same answer: no probing of the index.
        audit(Action.VIEWER_LINK, 403, username=user.username, reason="policy")
        return _page("refused.html", 403, status=403, message="You may not open that study.")
    ctx = web_context()
    token, _ = issue_viewer_link(
        ctx.viewer_key,
        username=user.username,
        study_instance_uid=study,
        sid=claims.sid,
        ttl_s=ctx.settings.viewer_link_ttl_s,
    )
    audit(Action.VIEWER_LINK, 200, username=user.username, study=study)
    # The token stays in the fragment: browsers keep it across the redirect and never send it.
    fragment = {"token": token} | ({"sop": sop} if is_uid(sop) else {})
    return _see_other(f"/view#{urlencode(fragment)}")


@bp.post("/worklist/sign-out")
@form_post
def sign_out(user: User, claims: SessionClaims) -> Response:
    """End the login session: this page, its viewer links and the viewers they opened."""
    accounts.sign_out(web_context().database_url, claims.sid, user.id)
    audit(Action.LOGOUT, 200, username=user.username)
    response = _see_other("/")
    response.delete_cookie(session_cookie_name(), path="/", secure=_https(), samesite="Strict")
    return response


# --------------------------------------------------------------------------- AI review


@bp.get("/worklist/review")
@signed_in_page
def review_page(user: User, claims: SessionClaims) -> Response:
    """A study's AI readings, their findings and verdicts (`?study=UID`); radiologists get
    the Accept and Reject forms. 403 for a study the user may not open, as for an unknown one."""
    return _review(user, claims, request.args.get("study", ""))


@bp.post("/worklist/review/verdict")
@form_post
def review_verdict(user: User, claims: SessionClaims) -> Response:
    """The review panel's Accept / Reject (webapp/readings.py's rules); back to the panel."""
    study = request.form.get("study", "")
    try:
        reading_id = int(request.form.get("reading", ""))
    except ValueError:
        reading_id = 0
    body = {
        "verdict": request.form.get("verdict"),
        "finding": request.form.get("finding") or None,
        "reason": request.form.get("reason") or None,
    }
    judged = give_verdict(user, study, reading_id, body)
    if judged.reading is None:
        return _review(user, claims, study, status=judged.status, error=judged.message)
    return _see_other(f"/worklist/review?{urlencode({'study': study})}#reading-{reading_id}")


def _review(
    user: User, claims: SessionClaims, study: str, *, status: int = 200, error: str = ""
) -> Response:
    with db_session() as session:
        row = worklist_row(session, user, study) if is_uid(study) else None
    readings = study_readings(user, study) if row is not None else None
    if row is None or readings is None:
        if row is None:
            audit(Action.READINGS, 403, username=user.username, reason="policy")
        message = "You may not open that study."
        return _page("refused.html", 403, status=403, message=message)
    return _page(
        "review.html",
        status,
        user=user,
        csrf=csrf_token(claims.sid),
        study=study,
        patient_name=row.patient_name,
        patient_id=row.patient_id,
        study_date=row.study_date,
        description=row.description,
        readings=readings,
        may_judge=user.role == Role.RADIOLOGIST,
        error=error,
    )


# --------------------------------------------------------------------------- break-glass

MIN_REASON_LENGTH = 10
MAX_REASON_LENGTH = 500


@bp.get("/worklist/break-glass")
@signed_in_page
def break_glass_page(user: User, claims: SessionClaims) -> Response:
    """A clinician's form to open one patient outside the care list: full MRN and a reason."""
    if user.role != Role.CLINICIAN:
        return _see_other("/worklist")  # radiologists and admins open every study already
    minutes = web_context().settings.break_glass_minutes
    return _page("break_glass.html", user=user, csrf=csrf_token(claims.sid), minutes=minutes)


@bp.post("/worklist/break-glass")
@form_post
def open_break_glass(user: User, claims: SessionClaims) -> Response:
    """Grant the clinician this patient for `break_glass_minutes`, audited with the reason; then
    the worklist shows that patient's studies. Only a full MRN of a patient with studies in
    the archive: no browsing, no partial search outside the care list."""
    settings = web_context().settings
    if user.role != Role.CLINICIAN:
        return _see_other("/worklist")
    mrn = request.form.get("mrn", "").strip()
    reason = " ".join(request.form.get("reason", "").split())
    values = {
        "user": user,
        "csrf": csrf_token(claims.sid),
        "minutes": settings.break_glass_minutes,
        "mrn": mrn[:64],
        "reason": reason[:MAX_REASON_LENGTH],
    }
    if len(reason) < MIN_REASON_LENGTH or len(reason) > MAX_REASON_LENGTH:
        audit(Action.BREAK_GLASS, 400, username=user.username, reason="no reason given")
        error = f"Give the reason, in {MIN_REASON_LENGTH} to {MAX_REASON_LENGTH} characters."
        return _page("break_glass.html", 400, error=error, **values)
    granted = accounts.open_break_glass(
        web_context().database_url, user, mrn, reason, settings.break_glass_minutes
    )
    if granted is None:
        audit(Action.BREAK_GLASS, 404, username=user.username, reason="no study for that MRN")
        error = "No study in the archive for that MRN. Type the patient's full MRN."
        return _page("break_glass.html", 404, error=error, **values)
    audit(
        Action.BREAK_GLASS,
        200,
        username=user.username,
        patient=mrn,
        reason=f"break-glass for {settings.break_glass_minutes} min: {reason}"[:255],
    )
    return _see_other("/worklist?" + urlencode({"mrn": mrn}))


@bp.get("/worklist/break-glass/log")
@signed_in_page
def break_glass_log(user: User, claims: SessionClaims) -> Response:
    """Every break-glass access, newest first, for admins: who, which patient, when, why."""
    if user.role != Role.ADMIN:
        audit(Action.BREAK_GLASS, 403, username=user.username, reason="log: not an admin")
        return _page("refused.html", 403, status=403, message="Admins only.")
    with db_session() as session:
        rows = session.exec(
            select(BreakGlassGrant, User.username)
            .join(User, col(User.id) == col(BreakGlassGrant.user_id))
            .order_by(col(BreakGlassGrant.opened_at).desc())
            .limit(1000)
        ).all()
    now = datetime.now(UTC)
    entries = [
        {
            "username": username,
            "patient_id": grant.patient_id,
            "opened_at": as_utc(grant.opened_at).strftime("%Y-%m-%d %H:%M UTC"),
            "expires_at": as_utc(grant.expires_at).strftime("%Y-%m-%d %H:%M UTC"),
            "open": as_utc(grant.expires_at) > now,
            "reason": grant.reason,
        }
        for grant, username in rows
    ]
    audit(Action.BREAK_GLASS, 200, username=user.username, reason="log viewed", now=False)
    return _page("break_glass_log.html", user=user, csrf=csrf_token(claims.sid), entries=entries)
