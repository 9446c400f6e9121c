"""What every page shares: its template, with the user, the notice of what was just done and the app's state."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from leukodx import CLASSES

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
