"""Request dependencies: the app context, a database session, and who is asking (token or login session)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from leukodx.errors import LeukodxError
from leukodx.web.auth import session_lookup, token_lookup
from leukodx.web.db import LoginSession, utcnow

SESSION_COOKIE = "leukodx_session"
LOGIN_CSRF_COOKIE = "leukodx_login_csrf"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

bearer = HTTPBearer(auto_error=False, description="An API token from `leukodx token create --name NAME`.")


@dataclass
class Principal:
    name: str
    role: str
    kind: str  # "user" or "token"
    session: LoginSession | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class LoginRequired(Exception):
    """A page was asked for without a login: redirect to the login page."""


class CsrfFailed(Exception):
    pass


class NotAllowed(LeukodxError):
    status = 403


def ctx(request: Request):
    return request.app.state.ctx


def get_db(request: Request) -> Iterator[Session]:
    db = request.app.state.ctx.sessions()
    try:
        yield db
    finally:
        db.close()


Db = Annotated[Session, Depends(get_db)]


def release(db: Session) -> None:
    """End the session's transaction after who-is-asking was looked up: its pooled connection goes back at
    once instead of being held for the whole request (an upload's analysis takes the time). The looked-up
    rows stay readable (expire_on_commit=False); a later use of `db` takes a connection again."""
    db.commit()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def session_principal(request: Request, db: Session) -> Principal | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    row = session_lookup(db, cookie)
    if row is None:
        return None
    return Principal(row.user.username, row.user.role, "user", row)


BAD_SCHEME = "Use 'Authorization: Bearer <token>' with a token from `leukodx token create --name NAME`."
BAD_TOKEN = "The API token is wrong or revoked. Create one with `leukodx token create --name NAME`."


def token_principal(db: Session, header: str) -> Principal:
    """Who an `Authorization: Bearer <token>` header is (the one parser: the API and the image links); 401 for
    another scheme or a wrong or revoked token. The token's last use is noted, at most once in 5 minutes."""
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized(BAD_SCHEME)
    row = token_lookup(db, secret.strip())
    if row is None:
        raise _unauthorized(BAD_TOKEN)
    now = utcnow()
    last = row.last_used_at
    if last is None or (now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo))).total_seconds() > 300:
        row.last_used_at = now  # at most one write per token every 5 minutes, not one per request
    release(db)
    return Principal(f"token:{row.name}", row.role, "token")


def api_principal(
    request: Request, db: Db, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Bearer token, or the browser's login session (then unsafe methods need the X-CSRF-Token header).
    `creds` puts the bearer scheme in the OpenAPI document; the header is read by `token_principal`."""
    if request.headers.get("authorization"):
        return token_principal(db, request.headers["authorization"])
    p = session_principal(request, db)
    release(db)
    if p is None:
        raise _unauthorized("Log in, or send 'Authorization: Bearer <token>' (see `leukodx token create`).")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get("x-csrf-token", "")
        if p.session is None or not hmac.compare_digest(sent, p.session.csrf_token):
            raise HTTPException(403, detail="Missing or wrong X-CSRF-Token header; reload the page and try again.")
    return p


def admin_principal(p: Annotated[Principal, Depends(api_principal)]) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, detail="Only an admin may do this.")
    return p


def page_principal(request: Request, db: Db) -> Principal:
    p = session_principal(request, db)
    release(db)
    if p is None:
        raise LoginRequired()
    return p


async def check_form_csrf(request: Request, p: Annotated[Principal, Depends(page_principal)]) -> Principal:
    form = await request.form()
    sent = str(form.get("csrf_token", ""))
    if p.session is None or not hmac.compare_digest(sent, p.session.csrf_token):
        raise CsrfFailed()
    return p


def _admin(p: Principal) -> Principal:
    if not p.is_admin:
        raise NotAllowed("Only an admin may do this (manage users, tokens and the cell model, delete cases).")
    return p


ApiUser = Annotated[Principal, Depends(api_principal)]
ApiAdmin = Annotated[Principal, Depends(admin_principal)]
PageUser = Annotated[Principal, Depends(page_principal)]
FormUser = Annotated[Principal, Depends(check_form_csrf)]
AdminPage = Annotated[Principal, Depends(lambda p=Depends(page_principal): _admin(p))]  # a 403 page for others
AdminForm = Annotated[Principal, Depends(lambda p=Depends(check_form_csrf): _admin(p))]
