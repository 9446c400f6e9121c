"""Logging in (CSRF cookie, throttled failures, a session cookie) and out."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy import delete

from leukodx.web import auth
from leukodx.web.db import LoginSession, audit, utcnow
from leukodx.web.deps import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Db, FormUser, session_principal
from leukodx.web.pages.base import render

router = APIRouter()


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/cases"
    return target


@router.get("/login")
def login_page(request: Request, db: Db, next: str = "/cases"):
    if session_principal(request, db) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    resp = render(request, "login.html", csrf=token, next=_safe_next(next), error="", username="")
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                    secure=request.app.state.ctx.settings.cookie_secure)
    return resp


@router.post("/login")
async def login(
    request: Request,
    db: Db,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/cases",
):
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie, csrf_token):
        return render(request, "login.html", 403, csrf=cookie or secrets.token_urlsafe(32), next=_safe_next(next),
                      username=username, error="The login form expired. Please try again.")
    throttle = request.app.state.login_failures
    key = (request.client.host if request.client else "", username.strip().lower())
    if throttle.blocked(key):
        return render(request, "login.html", 429, csrf=cookie, next=_safe_next(next), username=username,
                      error="Too many failed log-ins. Wait a minute, then try again.")
    user = await run_in_threadpool(auth.authenticate, db, username.strip(), password)
    if user is None:
        throttle.fail(key)
        audit(db, username.strip()[:100] or "?", "login.failed", f"user:{username.strip()[:64]}")
        db.commit()
        return render(request, "login.html", 401, csrf=cookie, next=_safe_next(next), username=username,
                      error="The user name or password is wrong. Ask your administrator if you have no account.")
    throttle.clear(key)
    s = request.app.state.ctx.settings
    db.execute(delete(LoginSession).where(LoginSession.expires_at < utcnow()))
    value, _ = auth.start_session(db, user, s.session_hours)
    audit(db, user.username, "login", f"user:{user.username}")
    db.commit()
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="lax", secure=s.cookie_secure,
                    max_age=int(s.session_hours * 3600))
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout")
def logout(request: Request, who: FormUser, db: Db):
    row = db.get(LoginSession, who.session.id) if who.session is not None else None
    if row is not None:
        db.delete(row)
    audit(db, who.name, "logout", f"user:{who.name}")
    db.commit()
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp
