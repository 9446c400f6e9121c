"""The cases: the list with search and filters, a new case, a case with its viewer, cell gallery and review,
deletion, report, and the cell crops."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.exc import IntegrityError

from leukodx.errors import LeukodxError
from leukodx.web import cells as cell_logic
from leukodx.web import gallery as gallery_logic
from leukodx.web.cases import rules, serialise, store
from leukodx.web.cases.rules import Invalid, Locked
from leukodx.web.db import Case, Field, utcnow
from leukodx.web.deps import AdminForm, Db, FormUser, PageUser
from leukodx.web.pages.base import render
from leukodx.web.schemas import CaseId
from leukodx.web.uploads import ACCEPTED_TYPES

router = APIRouter()


@router.get("/")
def home():
    return RedirectResponse("/cases", status_code=303)


def _list_page(request: Request, who, db, status_code: int = 200, q: str = "", status: str = "all",
               flagged: str = "", **form):
    flag = {"yes": True, "no": False}.get(flagged)
    rows, total = store.list_cases(db, q, status, flag, limit=500)
    _, all_total = store.list_cases(db, limit=1)
    query = {"q": q, "status": status, **({"flagged": "true" if flag else "false"} if flag is not None else {})}
    filters = {k: v for k, v in query.items() if v}
    csv_url = "/api/v1/cases?" + urlencode({**filters, "format": "csv"})
    fields_csv_url = "/api/v1/fields.csv" + ("?" + urlencode(filters) if filters else "")
    form = {"error": "", "warning": "", "duplicates": [], **dict.fromkeys(
        ("reference", "accession", "patient_id", "note", "specimen", "stain"), ""), **form,
        "form_token": secrets.token_urlsafe(24)}
    return render(request, "cases.html", status_code, who=who, rows=rows, total=total, all_total=all_total, q=q,
                  status=status, flagged=flagged, csv_url=csv_url, fields_csv_url=fields_csv_url, **form)


@router.get("/cases")
def cases_page(
    request: Request, who: PageUser, db: Db,
    q: Annotated[str, Query(max_length=100)] = "", status: str = "all", flagged: str = "",
):
    status = status if status in ("all", "unreviewed", "reviewed") else "all"
    return _list_page(request, who, db, q=q, status=status, flagged=flagged)


@router.post("/cases")
def new_case(
    request: Request, who: FormUser, db: Db,
    reference: Annotated[str, Form(max_length=500)] = "",
    accession: Annotated[str, Form(max_length=500)] = "",
    patient_id: Annotated[str, Form(max_length=500)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
    specimen: Annotated[str, Form(max_length=500)] = "",
    stain: Annotated[str, Form(max_length=500)] = "",
    form_token: Annotated[str, Form(max_length=100)] = "",
    confirm_duplicate: Annotated[str, Form(max_length=10)] = "",
):
    """A double submit of the same form (same one-time token) makes one case: the second is sent to it."""
    done = store.already_submitted(db, form_token)
    if done:
        return RedirectResponse(done, status_code=303)
    form = {"reference": reference, "accession": accession, "patient_id": patient_id, "note": note,
            "specimen": specimen, "stain": stain}
    try:
        ref = rules.clean_reference(reference)
        others = store.same_reference(db, ref)
        same_acc = store.same_accession(db, accession)
        if (others or same_acc) and not confirm_duplicate:
            warning = " ".join(w for w in (rules.duplicate_warning(others),
                                           rules.duplicate_accession_warning(same_acc)) if w)
            return _list_page(request, who, db, 409, warning=warning, same=(bool(others), bool(same_acc)),
                              duplicates=list({c.id: c for c in [*others, *same_acc]}.values()), **form)
        case = store.create_case(db, ref, note, who.name, specimen, stain, form_token=form_token,
                                 accession=accession, patient_id=patient_id,
                                 differential_target=request.app.state.ctx.settings.differential_target)
    except LeukodxError as exc:
        db.rollback()
        return _list_page(request, who, db, 422, error=exc.message, **form)
    except IntegrityError:  # the same token committed by a concurrent submit of this form
        db.rollback()
        return RedirectResponse(store.already_submitted(db, form_token) or "/cases", status_code=303)
    return RedirectResponse(f"/cases/{case.id}?done=created", status_code=303)


# --- the case page -----------------------------------------------------------------------------------------

def _current_index(case: Case, field_id: int | None) -> int:
    ids = [f.id for f in case.fields]
    if field_id in ids:
        return ids.index(field_id)
    return next((i for i, f in enumerate(case.fields) if not f.review_decision), 0)


def _next_unreviewed(case: Case, after_id: int) -> int | None:
    ids = [f.id for f in case.fields]
    start = ids.index(after_id) if after_id in ids else -1
    order = case.fields[start + 1:] + case.fields[:start + 1]
    return next((f.id for f in order if not f.review_decision), None)


def _gallery(case: Case) -> list[tuple[str, list[dict]]]:
    """[(class, [cell + its field])] of the cells of assessable fields, grouped by the class each counts as now
    (the AI's pre-classification unless a reviewer moved it), in the vocabulary's order, the unclassified last.
    A flagged field's cells are shown but not counted (`counted` False) until the field is reviewed
    (rules.counted_cells); unassessable fields' cells are left out."""
    groups: dict[str, list[dict]] = {}
    seq = 0  # the cell's place in the page's order within any group (app.js puts a moved cell back by it)
    for i, f in enumerate(case.fields, start=1):
        if not rules.is_assessable(f):
            continue
        scale, counted = gallery_logic.um_per_px(f.cells), rules.counts(f)
        for c in f.cells or []:
            groups.setdefault(cell_logic.final_class(c), []).append(
                {**c, "field_id": f.id, "field_no": i, "um_per_px": scale, "counted": counted, "seq": seq})
            seq += 1
    return [(k, groups[k]) for k in GALLERY_ORDER if k in groups]


# the gallery's groups in the page's order (app.js makes a group a moved cell needs in this order too)
GALLERY_ORDER = (*cell_logic.REVIEW_LABELS,
                 *[k for k in cell_logic.KNOWN_CLASSES if k not in cell_logic.REVIEW_LABELS],
                 cell_logic.UNCLASSIFIED, cell_logic.EDGE)


LOCKED_WHERE = "Type it in “Reason for the amendment” below, then save again."


def _failed(request: Request, db, who, case_id: int, exc: LeukodxError, key: str, where: str | None = LOCKED_WHERE,
            **page):
    """The case page again after a change failed (rolled back): the error under `key` (for a lock, `where` says
    where to type the reason), with its status (Locked 409, NotFound 404, Invalid 422: web.cases.rules)."""
    db.rollback()
    page[key] = f"{exc.message} {where}" if isinstance(exc, Locked) and where else exc.message
    return case_page_response(request, db, who, case_id, getattr(exc, "status", 422), **page)


def case_page_response(request: Request, db, who, case_id: int, status_code: int = 200, field_id: int | None = None,
                       **extra):
    case = store.get_case(db, case_id)
    idx = _current_index(case, field_id)
    extra = {"error": "", "field_error": "", "case_error": "", "form": {}, "bulk_open": False, **extra}
    # a form's failure answer (the page at its POST URL): app.js puts the case's own URL in the address bar
    # (history.replaceState), so a reload GETs the page instead of posting the form again
    extra["replace_url"] = (f"/cases/{case_id}" + (f"?field={field_id}" if field_id is not None else "")
                            if request.method == "POST" else "")
    service = request.app.state.ctx.service
    cd = serialise.case_dict(case, service)
    gallery = _gallery(case)
    field_numbers = {f.id: i for i, f in enumerate(case.fields, start=1)}
    field_um = {f.id: gallery_logic.um_per_px(f.cells, f.result) for f in case.fields}
    reviewed = rules.reviewed_summary(service, case) if case.fields else None
    withdrawn = request.query_params.get("withdrawn") == "1"
    bulk = rules.bulk_confirmable(case, service.benign)
    if withdrawn and case.amendments and not extra["form"]:  # verify again in the amendment that withdrew it
        extra["form"] = {"amendment_reason": case.amendments[-1].get("reason", "")}
    tally, fields_decisive = _field_calls(case, reviewed)
    warnings = list(cd.get("warnings", [])) + _disagreement(case, tally, fields_decisive)
    return render(
        request, "case.html", status_code, who=who, case=case, cd=cd, current=idx,
        field_numbers=field_numbers, field_um=field_um, n_gallery=sum(len(items) for _, items in gallery),
        unknown_scale=[f.id for f in case.fields if f.cells and not field_um[f.id] and rules.is_assessable(f)],
        not_shown=[field_numbers[f.id] for f in case.fields
                   if f.cells and rules.is_assessable(f) and not rules.counts(f)],
        crop=gallery_logic, ai_confident=cd["ai"]["confident"],
        field=case.fields[idx] if case.fields else None,
        reviewed=reviewed, field_tally=_tally_words(tally), fields_decisive=fields_decisive,
        cs=cell_logic.cell_summary(rules.counted_cells(case.fields)),
        gallery=gallery, warnings=warnings,
        gallery_groups=[[k, cell_logic.WORDS.get(k, k)] for k in GALLERY_ORDER],
        n_reviewed=sum(1 for f in case.fields if f.review_decision),
        bulk=bulk, bulk_malignant=[i for i, _, bad in bulk if bad], withdrawn=withdrawn,
        cell_keys=cell_logic.KEYS, review_labels=cell_logic.REVIEW_LABELS, cell_words=cell_logic.WORDS,
        amendment_rule=rules.AMENDMENT_RULE, accepted_types=sorted(ACCEPTED_TYPES), **extra)


def _field_calls(case: Case, reviewed) -> tuple[dict[str, int], bool | None]:
    """The reviewer's calls of the assessable fields ({class: n}, most first) and whether the case rule over
    them is decisive enough to start the sign-off from it: every field reviewed, nothing left to review, the
    fields agreeing (benign vs leukemic) and one class clearly ahead. 3 Benign, 3 Early, 2 Pro and 1 Pre is
    not a Benign case, although the mean of the calls ties Benign first. None while the models load."""
    calls = [f.review_label for f in case.fields if f.review_label and rules.is_assessable(f)]
    tally = dict(sorted(Counter(calls).items(), key=lambda kv: -kv[1]))
    if tally and reviewed is None:
        return tally, None  # the models are loading: the case rule is theirs
    if not tally or reviewed is None or reviewed.label is None:
        return tally, False
    counts = sorted(tally.values(), reverse=True)
    ahead = len(counts) == 1 or counts[0] > counts[1]
    return tally, ahead and not reviewed.needs_review


def _disagreement(case: Case, tally: dict[str, int], decisive: bool | None) -> list[str]:
    """The page's sign-off warning when the reviewer's own field calls point to no one call."""
    if not tally or decisive is not False or case.review_decision is not None:
        return []
    return [f"Your field calls do not point to one call ({_tally_words(tally)}): choose the final call yourself, "
            "and say why in the note."]


def _tally_words(tally: dict[str, int]) -> str:
    return ", ".join(f"{n} {c}" for c, n in tally.items())


@router.get("/cases/{case_id}")
def case_page(request: Request, case_id: CaseId, who: PageUser, db: Db,
              field: Annotated[int | None, Query(ge=1, le=2**53)] = None,
              cell: Annotated[int | None, Query(ge=0, le=2**53)] = None):
    return case_page_response(request, db, who, case_id, field_id=field, cell=cell)


@router.post("/cases/{case_id}/fields/{field_id}/review")
def review_field(
    request: Request, case_id: CaseId, field_id: CaseId, who: FormUser, db: Db,
    label: Annotated[str, Form(max_length=20)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
    amendment_reason: Annotated[str, Form(max_length=2000)] = "",
):
    """The field's call: the AI's confirmed, another class (override), or "unassessable" (the image cannot be
    read: left out of the case call and the differential; the note is its reason)."""
    case = store.lock_case(db, case_id)
    f = next((f for f in case.fields if f.id == field_id), None)
    if f is None:
        raise rules.NotFound(f"Case {case_id} has no field {field_id}.", "Reload the case page.")
    if label == "unassessable":
        item = {"field_id": field_id, "decision": "unassessable", "note": note}
    else:
        item = {"field_id": field_id, "decision": "confirm" if label and label == f.label else "override",
                "label": label or None, "note": note}
    was_verified = case.differential_verified
    try:
        if not label:
            raise Invalid("No call was chosen for this field.",
                          "Choose a class, or 'Unassessable' if the image cannot be read, then save.")
        store.review(db, case, who.name, None, [item], amendment_reason,
                     classes=request.app.state.ctx.service.classes)
    except LeukodxError as exc:
        return _failed(request, db, who, case_id, exc, "field_error", field_id=field_id,
                       form={"field_label": label, "field_note": note, "amendment_reason": amendment_reason})
    case = store.get_case(db, case_id, fresh=True)
    nxt, withdrawn = _next_unreviewed(case, field_id), _withdrawn(was_verified, case)
    if nxt is None:  # none left to review: on to the sign-off
        return RedirectResponse(f"/cases/{case_id}?field={field_id}&done=fields-all-reviewed{withdrawn}#review", 303)
    return RedirectResponse(f"/cases/{case_id}?field={nxt}&done=field-reviewed{withdrawn}#viewer", status_code=303)


def _withdrawn(was_verified: bool, case: Case) -> str:
    """The query that makes the page say the change took the differential's verification back, and offer it again."""
    return "&withdrawn=1" if was_verified and not case.differential_verified else ""


@router.post("/cases/{case_id}/confirm-unflagged")
def confirm_unflagged(request: Request, case_id: CaseId, who: FormUser, db: Db,
                      confirm_malignant: Annotated[str, Form(max_length=10000)] = ""):
    """The confirm step's form: `confirm_malignant` holds the numbers of the malignant calls it listed."""
    case = store.lock_case(db, case_id)
    try:
        named = [int(x) for x in confirm_malignant.split(",") if x.strip().isdigit()]
        n = store.confirm_unflagged(db, case, who.name, request.app.state.ctx.service.benign, named)
    except LeukodxError as exc:
        if isinstance(exc, Invalid):  # a malignant call the page did not list: the list changed
            exc = Invalid("The list changed since you opened it:", "check it again below, then confirm.")
        return _failed(request, db, who, case_id, exc, "error", where=None, bulk_open=True)
    return RedirectResponse(f"/cases/{case_id}?done=confirmed-{min(n, 9999)}#review", status_code=303)


@router.post("/cases/{case_id}/fields/{field_id}/cells")
def review_cell(
    request: Request, case_id: CaseId, field_id: CaseId, who: FormUser, db: Db,
    cell_id: Annotated[int, Form(ge=0, le=2**53)],
    label: Annotated[str, Form(max_length=20)] = "",
    amendment_reason: Annotated[str, Form(max_length=2000)] = "",
):
    """The gallery's form for one cell (without JavaScript; with it, the page uses the API)."""
    case = store.lock_case(db, case_id)
    was_verified = case.differential_verified
    try:
        if label and label not in cell_logic.REVIEW_LABELS:
            raise Invalid(f"Unknown cell class {label!r}.", "Choose a class from the list.")
        store.review_case_cells(db, case, [{"field_id": field_id, "id": cell_id, "label": label or None}], who.name,
                                amendment_reason)
    except LeukodxError as exc:
        return _failed(request, db, who, case_id, exc, "error", "Type it above the gallery, then save again.",
                       field_id=field_id, form={"amendment_reason": amendment_reason})
    withdrawn = _withdrawn(was_verified, case)
    return RedirectResponse(f"/cases/{case_id}?field={field_id}&done=cell-reviewed{withdrawn}#cell-{field_id}-{cell_id}",
                            status_code=303)


@router.post("/cases/{case_id}/review")
def review_case(
    request: Request, case_id: CaseId, who: FormUser, db: Db,
    label: Annotated[str, Form(max_length=20)] = "",
    note: Annotated[str, Form(max_length=5000)] = "",
    acknowledge: Annotated[str, Form(max_length=10)] = "",
    amendment_reason: Annotated[str, Form(max_length=2000)] = "",
):
    case = store.lock_case(db, case_id)
    decision = "confirm" if label and label == case.ai_label else "override"
    form = {"case_label": label, "case_note": note, "amendment_reason": amendment_reason}
    try:
        if not label:
            raise Invalid("No final call was chosen.", "Choose the class for the case in 'Final call', then sign off.")
        reviewed = rules.reviewed_summary(request.app.state.ctx.service, case)
        page_warnings = rules.sign_off_warnings(case, request.app.state.ctx.service.benign) + _disagreement(case, *_field_calls(case, reviewed))
        if page_warnings and not acknowledge and not rules.is_signed_off(case):
            raise Invalid("There are warnings to read before sign-off (listed above the sign-off button).",
                          "Deal with them, or tick 'I have seen these warnings' and sign off again.")
        store.review(db, case, who.name, {"decision": decision, "label": label or None, "note": note}, [],
                     amendment_reason, classes=request.app.state.ctx.service.classes)
    except LeukodxError as exc:
        return _failed(request, db, who, case_id, exc, "case_error", form=form)
    return RedirectResponse(f"/cases/{case_id}?done=case-reviewed#review", status_code=303)


@router.post("/cases/{case_id}/delete")
def delete_case(request: Request, case_id: CaseId, who: AdminForm, db: Db):
    case = store.get_case(db, case_id)
    for name in store.delete_case(db, case, who.name):
        request.app.state.ctx.store.delete(name)
    return RedirectResponse("/cases", status_code=303)


@router.get("/cases/{case_id}/report")
def report_page(request: Request, case_id: CaseId, who: PageUser, db: Db):
    case = store.get_case(db, case_id)
    reviewed = rules.reviewed_summary(request.app.state.ctx.service, case) if case.fields else None
    tally, decisive = _field_calls(case, reviewed)
    cs = cell_logic.cell_summary(rules.counted_cells(case.fields))
    call = case.review_label or case.ai_label  # the reviewer's once signed off, else the AI's
    benign_call = call if call in request.app.state.ctx.service.benign else None
    return render(request, "report.html", who=who, case=case, printed_at=utcnow(),
                  field_tally=_tally_words(tally), fields_decisive=decisive,
                  cd=serialise.case_dict(case, request.app.state.ctx.service),
                  field_numbers={f.id: i for i, f in enumerate(case.fields, start=1)},
                  reviewed=reviewed, cs=cs, cell_words=cell_logic.WORDS,
                  discord=rules.blasts_under_benign_call(cs["blast_percent"], benign_call))


@router.get("/cases/{case_id}/fields/{field_id}/cells/{cell_id}.png")
async def cell_crop(request: Request, case_id: CaseId, field_id: CaseId, cell_id: int, who: PageUser, db: Db):
    """One leukocyte cut from the stored field image, centred on its whole-cell box at the gallery's one um scale
    with a scale bar (leukodx.web.gallery), cached."""
    f = db.get(Field, field_id)
    if f is None or f.case_id != case_id:
        return Response("No such field.", status_code=404, media_type="text/plain")
    cell = next((c for c in (f.cells or []) if c.get("id") == cell_id), None)
    path = request.app.state.ctx.store.path(f.image_file)
    if cell is None or path is None:
        return Response("No such cell.", status_code=404, media_type="text/plain")
    scale = gallery_logic.um_per_px(f.cells, f.result)
    png = await run_in_threadpool(gallery_logic.crop_png, path, cell["bbox"], scale)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
