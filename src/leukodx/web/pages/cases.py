"""The cases: the list with search and filters, a new case, a case with its fields, review, deletion, report."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse

from leukodx.errors import LeukodxError
from leukodx.web import cases as case_logic
from leukodx.web.api import CaseId
from leukodx.web.db import utcnow
from leukodx.web.deps import Db, FormUser, PageUser
from leukodx.web.pages.base import render

router = APIRouter()


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
