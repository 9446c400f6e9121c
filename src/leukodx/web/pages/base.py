"""What every page shares: its template, with the user, the notice of what was just done and the app's state."""

from __future__ import annotations

from functools import partial

from fastapi import Request
from fastapi.responses import HTMLResponse

from leukodx.web import words

NOTICES = {
    "created": "Case created. Now add the field images of this smear.",
    "uploaded": "The new fields are analysed. Check each AI suggestion below, then sign off the case.",
    "field-reviewed": "Your decision for the field was saved. Showing the next field to review.",
    "fields-all-reviewed": "Your decision for the field was saved. Every field is reviewed now: check the case "
                           "summary, then sign off.",
    "cell-reviewed": "The cell's class was saved; the differential count is updated.",
    "case-reviewed": "The case is signed off. You can print the report.",
    "differential-verified": "The differential is verified in your name.",
    "password": "Your password was changed.",
    "user-added": "The user was added.",
    "token-revoked": "The token was revoked.",
    "cell-model-active": "The adapted cell model is active: new analyses use it; fields analysed before keep theirs.",
    "cell-model-bundled": "Rolled back: new analyses use the bundled cell model; fields analysed before keep theirs.",
}


def _install_filters(ctx) -> None:
    """Times in the lab's time zone (LEUKODX_TIMEZONE; stored in UTC), naming the zone, and probabilities through
    the one formatting helper (words.model_percent: never "100 %", as a model's output is never certain)."""
    env = ctx.templates.env
    name = getattr(ctx.settings, "timezone", None) or ""
    if env.globals.get("lab_zone_setting") == name and "lab_zone" in env.globals:
        return
    tz = words.zone(name)
    env.filters["dt"] = partial(words.local_time, tz=tz)
    env.filters["pct"] = words.model_percent  # every probability on the pages is a model's
    env.globals.update(lab_zone=words.zone_name(tz), lab_zone_setting=name, change_words=words.change_words,
                       percent=words.percent, blast_percent=words.blast_percent,
                       cell_model_words=words.cell_model_words)


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    ctx = request.app.state.ctx
    _install_filters(ctx)
    context.setdefault("who", getattr(request.state, "who", None))
    done = request.query_params.get("done", "")
    if done.startswith("confirmed-") and done.removeprefix("confirmed-").isdigit():
        n = int(done.removeprefix("confirmed-"))
        notice = (f"The AI's call was confirmed for {n} unflagged field{'s' if n != 1 else ''}. Flagged fields are "
                  "left for you." if n else "There was no unflagged field left to confirm.")
    else:
        notice = NOTICES.get(done, "")
    if notice and request.query_params.get("withdrawn") == "1":
        notice += (" This change took back the differential's verification: it is the AI pre-classification with "
                   "your changes now, not verified. Verify it again in the cell gallery.")
    context.setdefault("notice", notice)
    context.update(service=ctx.service, settings=ctx.settings, classes=ctx.service.classes)
    return ctx.templates.TemplateResponse(request, name, context, status_code=status_code)
