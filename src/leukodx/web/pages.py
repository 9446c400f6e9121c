"""The clinicians' pages (server-rendered, Jinja2). Forms carry a CSRF token; uploads go through the API."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy import select, update

from leukodx import CLASSES
from leukodx.errors import LeukodxError
from leukodx.web import auth
from leukodx.web import cases as case_logic
from leukodx.web.api import CaseId
from leukodx.web.db import ApiToken, AuditEntry, Field, LoginSession, User, audit, utcnow
from leukodx.web.deps import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Db, FormUser, PageUser, session_principal
from leukodx.web.storage import MEDIA_TYPES

router = APIRouter(include_in_schema=False)

NOTICES = {
    "created": "Case created. Now add the field images of this smear.",
    "uploaded": "The new fields are analysed. Check each AI suggestion below, then sign off the case.",
    "field-reviewed": "Your decision for the field was saved.",
    "case-reviewed": "The case is signed off. You can print the report.",
    "password": "Your password was changed.",
    "user-added": "The user was added.",
    "token-revoked": "The token was revoked.",
}


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    ctx = request.app.state.ctx
    context.setdefault("who", getattr(request.state, "who", None))
    context.setdefault("notice", NOTICES.get(request.query_params.get("done", ""), ""))
    context.update(service=ctx.service, settings=ctx.settings, classes=CLASSES)
    return ctx.templates.TemplateResponse(request, name, context, status_code=status_code)


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/cases"
    return target


# --- login -------------------------------------------------------------------------------------------------

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
    db.execute(LoginSession.__table__.delete().where(LoginSession.expires_at < utcnow()))
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
    row = db.get(LoginSession, who.session.id)
    if row is not None:
        db.delete(row)
    audit(db, who.name, "logout", f"user:{who.name}")
    db.commit()
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


# --- cases -------------------------------------------------------------------------------------------------

@router.get("/")
def home():
    return RedirectResponse("/cases", status_code=303)


@router.get("/cases")
def cases_page(
    request: Request, who: PageUser, db: Db,
    q: Annotated[str, Query(max_length=100)] = "", status: str = "all", flagged: str = "",
):
    status = status if status in ("all", "unreviewed", "reviewed") else "all"
    flag = {"yes": True, "no": False}.get(flagged)
    rows, total = case_logic.list_cases(db, q, status, flag, limit=500)
    _, all_total = case_logic.list_cases(db, limit=1)
    query = {"q": q, "status": status, **({"flagged": "true" if flag else "false"} if flag is not None else {})}
    from urllib.parse import urlencode

    csv_url = "/api/v1/cases?" + urlencode({**{k: v for k, v in query.items() if v}, "format": "csv"})
    return render(request, "cases.html", who=who, rows=rows, total=total, all_total=all_total, q=q,
                  status=status, flagged=flagged, csv_url=csv_url, error="", reference="")


@router.post("/cases")
def new_case(
    request: Request, who: FormUser, db: Db,
    reference: Annotated[str, Form(max_length=500)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
):
    try:
        case = case_logic.create_case(db, reference, note, who.name)
    except LeukodxError as exc:
        rows, total = case_logic.list_cases(db, limit=500)
        return render(request, "cases.html", 422, who=who, rows=rows, total=total, all_total=total, q="",
                      status="all", flagged="", csv_url="/api/v1/cases?format=csv", error=exc.message,
                      reference=reference)
    return RedirectResponse(f"/cases/{case.id}?done=created", status_code=303)


@router.get("/cases/{case_id}")
def case_page(request: Request, case_id: CaseId, who: PageUser, db: Db):
    case = case_logic.get_case(db, case_id)
    return render(request, "case.html", who=who, case=case, error="")


@router.post("/cases/{case_id}/fields/{field_id}/review")
def review_field(
    request: Request, case_id: CaseId, field_id: CaseId, who: FormUser, db: Db,
    label: Annotated[str, Form(max_length=20)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
):
    case = case_logic.lock_case(db, case_id)
    f = next((f for f in case.fields if f.id == field_id), None)
    if f is None:
        raise case_logic.NotFound(f"Case {case_id} has no field {field_id}.", "Reload the case page.")
    decision = "confirm" if label and label == f.label else "override"
    try:
        case_logic.review(db, case, who.name, None,
                          [{"field_id": field_id, "decision": decision, "label": label or None, "note": note}])
    except LeukodxError as exc:
        db.rollback()
        return render(request, "case.html", 422, who=who, case=case_logic.get_case(db, case_id), error=exc.message)
    return RedirectResponse(f"/cases/{case_id}?done=field-reviewed#field-{field_id}", status_code=303)


@router.post("/cases/{case_id}/review")
def review_case(
    request: Request, case_id: CaseId, who: FormUser, db: Db,
    label: Annotated[str, Form(max_length=20)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
):
    case = case_logic.lock_case(db, case_id)
    decision = "confirm" if label and label == case.ai_label else "override"
    try:
        case_logic.review(db, case, who.name, {"decision": decision, "label": label or None, "note": note}, [])
    except LeukodxError as exc:
        db.rollback()
        return render(request, "case.html", 422, who=who, case=case_logic.get_case(db, case_id), error=exc.message)
    return RedirectResponse(f"/cases/{case_id}?done=case-reviewed#review", status_code=303)


@router.post("/cases/{case_id}/delete")
def delete_case(request: Request, case_id: CaseId, who: FormUser, db: Db):
    if not who.is_admin:
        return render(request, "error.html", 403, who=who, title="Not allowed",
                      message="Only an admin may delete a case.", action_url=f"/cases/{case_id}",
                      action="Back to the case")
    case = case_logic.get_case(db, case_id)
    for name in case_logic.delete_case(db, case, who.name):
        request.app.state.ctx.store.delete(name)
    return RedirectResponse("/cases", status_code=303)


@router.get("/cases/{case_id}/report")
def report_page(request: Request, case_id: CaseId, who: PageUser, db: Db):
    case = case_logic.get_case(db, case_id)
    return render(request, "report.html", who=who, case=case, printed_at=utcnow())


@router.get("/cases/{case_id}/fields/{field_id}/heatmap")
async def field_heatmap(request: Request, case_id: CaseId, field_id: CaseId, who: PageUser):
    """The field's Grad-CAM heat map: computed the first time it is asked for, then kept (content-hash name)."""
    ctx = request.app.state.ctx

    def lookup():
        with ctx.sessions() as db:
            f = db.get(Field, field_id)
            if f is None or f.case_id != case_id:
                raise case_logic.NotFound(f"Case {case_id} has no field {field_id}.", "Reload the case page.")
            return f.heatmap_file, f.image_file, f.display_name

    heat, image_file, name = await run_in_threadpool(lookup)
    if heat is None:
        path = ctx.store.path(image_file)
        if path is None:
            raise case_logic.NotFound("The field's image file is missing.", "Upload the field again.")
        data = await run_in_threadpool(path.read_bytes)
        side = ctx.settings.display_max_side

        def job(analyzer):
            import numpy as np

            from leukodx.data.images import open_image
            from leukodx.web.overlays import heatmap_png

            rgb = np.asarray(open_image(data, name=name))
            return heatmap_png(rgb, analyzer.analyze(rgb, name=name, heatmap=True), side)

        png = await ctx.service.run(job)
        if png is None:
            return Response("This analyzer gives no heat map.", status_code=404, media_type="text/plain")

        def keep():
            stored = ctx.store.put(png, "png")
            with ctx.sessions() as db:
                db.execute(update(Field).where(Field.id == field_id).values(heatmap_file=stored))
                db.commit()
            return stored

        heat = await run_in_threadpool(keep)
    return RedirectResponse(f"/files/{heat}", status_code=303)


@router.get("/files/{name}")
def stored_file(request: Request, name: str, db: Db):
    who = session_principal(request, db)
    if who is None:
        return Response("Log in to see images.", status_code=401, media_type="text/plain")
    store = request.app.state.ctx.store
    path = store.path(name)
    if path is None:
        return Response("No such file.", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=MEDIA_TYPES[name.rsplit(".", 1)[1]],
                        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})


# --- account and admin --------------------------------------------------------------------------------------

@router.get("/account")
def account_page(request: Request, who: PageUser):
    return render(request, "account.html", who=who, error="")


@router.post("/account/password")
async def change_password(
    request: Request, who: FormUser, db: Db,
    current: Annotated[str, Form(max_length=1000)] = "",
    new: Annotated[str, Form(max_length=1000)] = "",
    repeat: Annotated[str, Form(max_length=1000)] = "",
):
    user = await run_in_threadpool(auth.authenticate, db, who.name, current)
    error = ""
    if user is None:
        error = "The current password is wrong."
    elif new != repeat:
        error = "The two new passwords differ. Type the same one twice."
    else:
        try:
            auth.set_password(db, who.name, new, actor=who.name)
        except LeukodxError as exc:
            error = exc.message
    if error:
        db.rollback()
        return render(request, "account.html", 422, who=who, error=error)
    value, _ = auth.start_session(db, user, request.app.state.ctx.settings.session_hours)
    db.commit()
    resp = RedirectResponse("/cases?done=password", status_code=303)
    resp.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="lax",
                    secure=request.app.state.ctx.settings.cookie_secure)
    return resp


def _admin_or_403(request: Request, who) -> Response | None:
    if who.is_admin:
        return None
    return render(request, "error.html", 403, who=who, title="Not allowed",
                  message="Only an admin may manage users and API tokens.", action_url="/cases",
                  action="Back to the cases")


def _admin_page(request: Request, who, db, status_code: int = 200, **extra):
    users = db.scalars(select(User).order_by(User.username)).all()
    tokens = db.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()
    log = db.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(50)).all()
    extra.setdefault("error", "")
    extra.setdefault("new_token", "")
    return render(request, "admin.html", status_code, who=who, users=users, tokens=tokens, log=log,
                  roles=auth.ROLES, **extra)


@router.get("/admin")
def admin_page(request: Request, who: PageUser, db: Db):
    return _admin_or_403(request, who) or _admin_page(request, who, db)


@router.post("/admin/users")
async def admin_add_user(
    request: Request, who: FormUser, db: Db,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    role: Annotated[str, Form(max_length=20)] = "clinician",
):
    if (denied := _admin_or_403(request, who)) is not None:
        return denied
    try:
        await run_in_threadpool(auth.add_user, db, username.strip(), password, role, who.name)
        db.commit()
    except LeukodxError as exc:
        db.rollback()
        return _admin_page(request, who, db, 422, error=exc.message)
    return RedirectResponse("/admin?done=user-added", status_code=303)


@router.post("/admin/tokens")
def admin_create_token(
    request: Request, who: FormUser, db: Db,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=20)] = "clinician",
):
    if (denied := _admin_or_403(request, who)) is not None:
        return denied
    try:
        _, secret = auth.create_token(db, name, role, actor=who.name)
        db.commit()
    except LeukodxError as exc:
        db.rollback()
        return _admin_page(request, who, db, 422, error=exc.message)
    return _admin_page(request, who, db, new_token=secret)


@router.post("/admin/tokens/{token_id}/revoke")
def admin_revoke_token(request: Request, token_id: CaseId, who: FormUser, db: Db):
    if (denied := _admin_or_403(request, who)) is not None:
        return denied
    row = db.get(ApiToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        audit(db, who.name, "token.revoke", f"token:{row.name}")
        db.commit()
    return RedirectResponse("/admin?done=token-revoked", status_code=303)


@router.get("/api")
def api_docs(request: Request, who: PageUser):
    spec = request.app.openapi()
    return render(request, "api.html", who=who, spec=spec)


def count_fields(db) -> int:
    from sqlalchemy import func

    return db.scalar(select(func.count(Field.id))) or 0
