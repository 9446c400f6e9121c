"""The HTTP API, /api/v1 (documented at /docs and /openapi.json). Bearer tokens or a login session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, Response, UploadFile

from leukodx.inference.scale import check_um_per_px
from leukodx.web import schemas
from leukodx.web.cases import rules, serialise, store
from leukodx.web.db import Case, audit
from leukodx.web.deps import ApiAdmin, ApiUser, Db

router = APIRouter(prefix="/api/v1", tags=["api"])


# --- helpers ---------------------------------------------------------------------------------------------

def case_out(request: Request, db, case_id: int) -> dict:
    """The case with its fields, as GET /cases/{id} answers it."""
    return serialise.case_dict(store.get_case(db, case_id), request.app.state.ctx.service)


def csv_answer(db, who, body: str, name: str, action: str, **what) -> Response:
    """A CSV download (`name`-<UTC time>.csv), its export audited."""
    audit(db, who.name, action, "cases", **what)
    db.commit()
    return Response(body, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}-{datetime.now(UTC).strftime("%Y%m%d-%H%M")}.csv"'})


def changed(request: Request, db, case_id: int, change: Callable[[Case], object]) -> dict:
    """`change(case)` on the case locked for writing (signed off: 409 naming amendment_reason), then the case,
    with `verification_withdrawn` when the change took the differential's verification back."""
    case = store.lock_case(db, case_id)
    was_verified = bool(case.differential_verified)
    with locked_as_409():
        change(case)
    out = case_out(request, db, case_id)
    out["verification_withdrawn"] = was_verified and not out["differential_verified"]
    return out


@contextmanager
def locked_as_409() -> Iterator[None]:
    """A signed-off case: the API's 409 names the field to send (pages say it in their words)."""
    try:
        yield
    except rules.Locked as exc:
        raise HTTPException(409, detail=exc.api_message) from None


# --- endpoints -------------------------------------------------------------------------------------------

@router.post("/analyze", response_model=schemas.AnalyzeOut, responses=schemas.UPLOAD_ERRORS, summary="Analyse fields without storing")
async def analyze(
    request: Request,
    who: ApiUser,
    files: Annotated[list[UploadFile], File(description="One or more field images (JPEG, PNG, TIFF, BMP).")],
    heatmap: bool = Query(False, description="Also compute the heat map (slower)."),
):
    """Analyse one or more smear field images and answer with the AI's suggestion for each. Nothing is stored."""
    return await request.app.state.ctx.service.analyse_files(files, heatmap)


@router.post("/cases", response_model=schemas.CaseOut, status_code=201, responses=schemas.ERRORS, summary="Create a case")
def create_case(request: Request, body: schemas.CaseIn, who: ApiUser, db: Db):
    """A new case for one smear. Use the lab's smear reference, not the patient's name; `accession` and
    `patient_id` (optional) are the lab's accession number and the hospital's patient identifier. Another case
    with the same reference or accession number is allowed (a smear may be re-examined) but named in
    `warnings`. The case's differential target is the server's LEUKODX_DIFFERENTIAL_TARGET."""
    case = store.create_case(db, body.reference, body.note, who.name, body.specimen, body.stain,
                             accession=body.accession, patient_id=body.patient_id,
                             differential_target=request.app.state.ctx.settings.differential_target)
    out = case_out(request, db, case.id)
    dups = [rules.duplicate_warning(store.same_reference(db, case.reference, but=case.id)),
            rules.duplicate_accession_warning(store.same_accession(db, case.accession, but=case.id))]
    out["warnings"] = [w for w in dups if w] + out["warnings"]
    return out


@router.get(
    "/cases",
    response_model=schemas.CaseList,
    responses={**schemas.ERRORS, 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    summary="List cases (JSON or CSV)",
)
def list_cases(
    request: Request,
    who: ApiUser,
    db: Db,
    q: str = Query("", max_length=100, description="Search the reference, accession number, patient identifier, "
                   "note and author."),
    status: Literal["all", "unreviewed", "reviewed"] = "all",
    flagged: bool | None = None,
    format: Literal["json", "csv"] = "json",
    limit: int = Query(200, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=schemas.MAX_ID),
):
    """The cases, newest first. `format=csv` answers a CSV file, one row per case."""
    rows, total = store.list_cases(db, q, status, flagged, limit, offset)
    threshold = rules.confidence_threshold(request.app.state.ctx.service)
    if format == "csv":
        return csv_answer(db, who, serialise.cases_csv(rows, threshold), "leukodx-cases", "cases.export", n=len(rows),
                          q=q, status=status, flagged=flagged)
    return {"total": total, "cases": [serialise.case_dict(c, threshold=threshold) for c in rows]}


@router.get("/cases/{case_id}", response_model=schemas.CaseOut, responses=schemas.ERRORS, summary="One case with its fields")
def get_case(request: Request, case_id: schemas.CaseId, who: ApiUser, db: Db):
    return case_out(request, db, case_id)


@router.post(
    "/cases/{case_id}/images", response_model=schemas.UploadOut, status_code=201,
    responses={**schemas.UPLOAD_ERRORS, **schemas.LOCK_ERRORS, 200: {"model": schemas.UploadOut, "description": "Nothing new: every "
                                                     "image was already a field of this case (see skipped)."}},
    summary="Upload and analyse fields of a case",
)
async def upload_images(
    request: Request,
    response: Response,
    case_id: schemas.CaseId,
    who: ApiUser,
    files: Annotated[list[UploadFile], File(description="One or more field images (JPEG, PNG, TIFF, BMP).")],
    amendment_reason: Annotated[str | None, Form(max_length=1000, description=schemas.AMENDMENT)] = None,
    um_per_px: Annotated[str | None, Form(description="The camera's calibration, micrometres per image pixel: "
                                          "used instead of the estimated scale (and of LEUKODX_UM_PER_PX).")] = None,
):
    """Each image is checked, analysed, stored under its content hash and added to the case in one transaction.
    If any file is rejected, nothing is stored. An image already in the case (same SHA-256) is not added again:
    `skipped` says so (201 when something was added, 200 when nothing was). A signed-off case answers 409
    unless `amendment_reason` is given."""
    with locked_as_409():
        um = check_um_per_px(um_per_px) if um_per_px else None
        out = await request.app.state.ctx.service.add_to_case(case_id, files, who.name, amendment_reason, um)
    if not out["added"]:
        response.status_code = 200
    return out


@router.patch("/cases/{case_id}/review", response_model=schemas.CaseOut, responses=schemas.LOCK_ERRORS, summary="Review a case")
def review_case(request: Request, case_id: schemas.CaseId, body: schemas.ReviewIn, who: ApiUser, db: Db):
    """Confirm or override the AI's call for the case (the sign-off) and/or for single fields, with a note; a
    field may also be declared `unassessable` (no smear, blank, unreadable: give the reason in `note`), which leaves
    it out of the reviewed case call and the differential. The AI's output is kept unchanged beside the
    reviewer's decision. Once signed off the case is locked: a change answers 409 unless `amendment_reason` is
    given; each amendment is kept in `amendments`, with its `changes` (before and after in words)."""
    return changed(request, db, case_id, lambda case: store.review(
        db, case, who.name, body.case.model_dump() if body.case else None, [f.model_dump() for f in body.fields],
        body.amendment_reason, classes=request.app.state.ctx.service.classes))


@router.patch(
    "/cases/{case_id}/fields/{field_id}/cells", response_model=schemas.CaseOut, responses=schemas.LOCK_ERRORS,
    summary="Reclassify cells of a field",
)
def review_cells(request: Request, case_id: schemas.CaseId, field_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], body: schemas.CellsIn,
                 who: ApiUser, db: Db):
    """Give cells of a field the reviewer's class (or exclude them, or undo with null). The case's differential
    and blast % are recomputed; the AI's suggestions and its own differential are kept. A signed-off case answers
    409 unless `amendment_reason` is given."""
    cells = [{**c.model_dump(), "field_id": field_id} for c in body.cells]
    return changed(request, db, case_id, lambda case: store.review_case_cells(db, case, cells, who.name,
                                                                              body.amendment_reason))


@router.patch("/cases/{case_id}/cells", response_model=schemas.CaseOut, responses=schemas.LOCK_ERRORS,
              summary="Reclassify cells of any fields of a case (the gallery's batch)")
def review_case_cells(request: Request, case_id: schemas.CaseId, body: schemas.CaseCellsIn, who: ApiUser, db: Db):
    """Give cells of any fields of the case a class in one transaction: `{"cells": [{"field_id", "id",
    "label"}]}`, label a class, 'excluded', or null (back to the AI's pre-classification). Answers the case. A
    real change takes the differential's verification back. A signed-off case answers 409 unless
    `amendment_reason` is given."""
    cells = [c.model_dump() for c in body.cells]
    return changed(request, db, case_id, lambda case: store.review_case_cells(db, case, cells, who.name,
                                                                              body.amendment_reason))


@router.post("/cases/{case_id}/differential/verify", response_model=schemas.CaseOut, responses=schemas.LOCK_ERRORS,
             summary="Verify the differential")
def verify_differential(request: Request, case_id: schemas.CaseId, who: ApiUser, db: Db, body: schemas.VerifyIn | None = None):
    """The reviewer has checked the class of every counted leukocyte (after reclassifying what was wrong): the
    differential becomes theirs (`differential_source`: 'verified', with who and when). Any later change of a
    cell's class, or of which fields count, takes it back. 422 while a counted cell has no class; a signed-off
    case answers 409 unless `amendment_reason` is given."""
    b = body or schemas.VerifyIn()
    return changed(request, db, case_id, lambda case: store.verify_differential(db, case, who.name, b.note,
                                                                                b.amendment_reason))


@router.get(
    "/cases/{case_id}/fhir", responses={**schemas.ERRORS, 200: {"content": {"application/fhir+json": {
        "schema": {"type": "object"}}}}}, summary="The case as a FHIR R4 DiagnosticReport",
)
def case_fhir(request: Request, case_id: schemas.CaseId, who: ApiUser, db: Db):
    """A FHIR R4 DiagnosticReport with its Observations contained (the class call, the blast %, the differential
    count). status: `preliminary` before sign-off, `final` after, `amended` after an amendment."""
    import json

    from leukodx.web.fhir import diagnostic_report

    case = store.get_case(db, case_id)
    body = diagnostic_report(case, request.app.state.ctx.settings,
                             rules.confidence_threshold(request.app.state.ctx.service))
    return Response(json.dumps(body), media_type="application/fhir+json")


@router.get(
    "/fields.csv", responses={**schemas.ERRORS, 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    summary="Fields of the cases as CSV (one row per field)",
)
def fields_csv(
    who: ApiUser,
    db: Db,
    case_id: int | None = Query(None, ge=1, le=schemas.MAX_ID, description="Only this case's fields."),
    q: str = Query("", max_length=100, description="Search the reference, accession number, patient identifier, "
                   "note and author."),
    status: Literal["all", "unreviewed", "reviewed"] = "all",
    flagged: bool | None = None,
    limit: int = Query(200, ge=1, le=10000),
):
    """Beside the case CSV (`GET /api/v1/cases?format=csv`): one row per field, with its AI call, flag in words,
    the reviewer's call and who made it, and its cells' counts."""
    if case_id is not None:
        rows = [store.get_case(db, case_id)]
    else:
        rows = [store.get_case(db, c.id) for c in store.list_cases(db, q, status, flagged, limit, 0)[0]]
    return csv_answer(db, who, serialise.fields_csv(rows), f"leukodx-case-{case_id}-fields" if case_id else
                      "leukodx-fields", "fields.export", n=len(rows), case_id=case_id)


@router.post("/cases/{case_id}/confirm-unflagged", response_model=schemas.CaseOut, responses=schemas.LOCK_ERRORS,
             summary="Confirm the AI's call of every unflagged, unreviewed field")
def confirm_unflagged(request: Request, case_id: schemas.CaseId, who: ApiUser, db: Db,
                      body: schemas.ConfirmUnflaggedIn | None = None):
    """Confirms the AI's call of each field that has no flag and no review yet (flagged fields stay for you). A
    malignant call is confirmed only when its field number is in `confirm_malignant`: else 422 naming those
    fields, and nothing is confirmed."""
    named, benign = (body or schemas.ConfirmUnflaggedIn()).confirm_malignant, request.app.state.ctx.service.benign
    return changed(request, db, case_id, lambda case: store.confirm_unflagged(db, case, who.name, benign, named))


@router.delete("/cases/{case_id}", status_code=204, responses=schemas.ERRORS, summary="Delete a case (admin)")
def delete_case(request: Request, case_id: schemas.CaseId, who: ApiAdmin, db: Db):
    case = store.get_case(db, case_id)
    for name in store.delete_case(db, case, who.name):
        request.app.state.ctx.store.delete(name)
    return Response(status_code=204)
