"""The user's own account: changing the password (which starts a new session)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from leukodx.errors import LeukodxError
from leukodx.web import auth
from leukodx.web.deps import SESSION_COOKIE, Db, FormUser, PageUser
from leukodx.web.pages.base import render

router = APIRouter()


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
    assert user is not None  # a wrong current password set `error` above
    value, _ = auth.start_session(db, user, request.app.state.ctx.settings.session_hours)
    db.commit()
    resp = RedirectResponse("/cases?done=password", status_code=303)
    resp.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="lax",
                    secure=request.app.state.ctx.settings.cookie_secure)
    return resp
