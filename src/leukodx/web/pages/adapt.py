"""Adapt to this lab (admins only): the labelled cells of signed-off cases, the adaptation in the background, its
commissioning report, and activating the adapted cell model or rolling back to the bundled one (web.adapt)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy import select

from leukodx.deploy.commission import MIN_CELLS
from leukodx.errors import LeukodxError
from leukodx.inference.cell_classes import BLAST, CELL_CLASS_WORDS, KNOWN_CLASSES
from leukodx.web import adapt
from leukodx.web.db import AuditEntry
from leukodx.web.deps import AdminForm, AdminPage, Db
from leukodx.web.pages.base import render

router = APIRouter()
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def _page(request: Request, who, db, status_code: int = 200, error: str = ""):
    ctx = request.app.state.ctx
    ctx.service.sync_cells()  # the choice another server process made
    counts = adapt.class_counts(db, KNOWN_CLASSES)
    n_blast = counts.get(BLAST, (0, 0))[0]
    log = db.scalars(select(AuditEntry).where(AuditEntry.action.in_((adapt.ACTIVATE, adapt.ROLLBACK,
                                                                      "cell_model.adapt")))
                     .order_by(AuditEntry.id.desc()).limit(20)).all()
    return render(request, "adapt.html", status_code, who=who, counts=counts, n_blast=n_blast,
                  n_other=sum(n for n, _ in counts.values()) - n_blast, min_cells=MIN_CELLS, job=ctx.adaptation,
                  latest=adapt.latest_run(ctx.settings), error=error, log=[(e, json.loads(e.detail)) for e in log],
                  active=getattr(ctx.service.analyzer, "cell_classifier", None), class_words=CELL_CLASS_WORDS,
                  bundled=adapt.active_choice(db, ctx.settings)[1] is None)


@router.get("/admin/adapt")
def adapt_page(request: Request, who: AdminPage, db: Db):
    return _page(request, who, db)


@router.post("/admin/adapt/run")
def adapt_run(request: Request, who: AdminForm):
    request.app.state.ctx.adaptation.start(request.app.state.ctx, who.name)
    return RedirectResponse("/admin/adapt", status_code=303)


@router.post("/admin/adapt/choose")
async def adapt_choose(request: Request, who: AdminForm, db: Db,
                       run: Annotated[str, Form(max_length=40)] = "",
                       reason: Annotated[str, Form(max_length=1000)] = ""):
    """Activate the adapted cell model of `run`, or roll back to the bundled one (no `run`), with a reason."""
    try:
        await run_in_threadpool(adapt.choose, request.app.state.ctx, who.name, run or None, reason)
    except LeukodxError as exc:
        return _page(request, who, db, 422, error=exc.message)
    return RedirectResponse("/admin/adapt?done=" + ("cell-model-active" if run else "cell-model-bundled"), 303)


@router.get("/admin/adapt/{run}/commissioning.html")
def adapt_report(request: Request, run: str, who: AdminPage):
    path = adapt.models_dir(request.app.state.ctx.settings) / run / "commissioning.html"
    if not adapt.RUN_NAME.match(run) or not path.is_file():
        raise HTTPException(404)
    # the report is a file of its own with an inline style (the app's policy allows none): it gets a policy of its
    # own that allows that style, and nothing else (no script, no frame, no form)
    return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})
