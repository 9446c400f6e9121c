"""Administration (admins only): users, API tokens and the latest audit entries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from leukodx.errors import LeukodxError
from leukodx.web import auth
from leukodx.web.db import ApiToken, AuditEntry, User, audit, utcnow
from leukodx.web.deps import AdminForm, AdminPage, Db
from leukodx.web.pages.base import render
from leukodx.web.schemas import CaseId

router = APIRouter()


def _admin_page(request: Request, who, db, status_code: int = 200, **extra):
    users = db.scalars(select(User).order_by(User.username)).all()
    tokens = db.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()
    log = db.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(50)).all()
    return render(request, "admin.html", status_code, who=who, users=users, tokens=tokens, log=log,
                  roles=auth.ROLES, **{"error": "", "new_token": "", **extra})


@router.get("/admin")
def admin_page(request: Request, who: AdminPage, db: Db):
    return _admin_page(request, who, db)


@router.post("/admin/users")
async def admin_add_user(
    request: Request, who: AdminForm, db: Db,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    role: Annotated[str, Form(max_length=20)] = "clinician",
):
    try:
        await run_in_threadpool(auth.add_user, db, username.strip(), password, role, who.name)
        db.commit()
    except LeukodxError as exc:
        db.rollback()
        return _admin_page(request, who, db, 422, error=exc.message)
    return RedirectResponse("/admin?done=user-added", status_code=303)


@router.post("/admin/tokens")
def admin_create_token(
    request: Request, who: AdminForm, db: Db,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=20)] = "clinician",
):
    try:
        _, secret = auth.create_token(db, name, role, actor=who.name)
        db.commit()
    except LeukodxError as exc:
        db.rollback()
        return _admin_page(request, who, db, 422, error=exc.message)
    return _admin_page(request, who, db, new_token=secret)


@router.post("/admin/tokens/{token_id}/revoke")
def admin_revoke_token(request: Request, token_id: CaseId, who: AdminForm, db: Db):
    row = db.get(ApiToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        audit(db, who.name, "token.revoke", f"token:{row.name}")
        db.commit()
    return RedirectResponse("/admin?done=token-revoked", status_code=303)
