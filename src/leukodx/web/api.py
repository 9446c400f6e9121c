"""The HTTP API, /api/v1 (documented at /docs and /openapi.json). Bearer tokens or a login session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from leukodx.inference.render import heatmap_png, overlay_png, shrink
from leukodx.web import cases as case_logic
from leukodx.web import cells as cell_logic
from leukodx.web.deps import ApiAdmin, ApiUser, Db
from leukodx.web.uploads import GoodImage, check_uploads

router = APIRouter(prefix="/api/v1", tags=["api"])
MAX_ID = 2**53  # ids fit SQLite/PostgreSQL integers (and JSON numbers)
CaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="The case's id.")]


# --- schemas ---------------------------------------------------------------------------------------------

class Problem(BaseModel):
    detail: Any = Field(description="What is wrong and what to do (a string, or a list of rejected files).")


class Cell(BaseModel):
    id: int
    area_px: int
    centroid: list[float]
    bbox: list[int]
    ai_label: str | None = None
    ai_confidence: float | None = None


CellLabel = Literal["blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "ig", "erythroblast",
                    "smudge", "artefact", "excluded"]
assert get_args(CellLabel) == cell_logic.REVIEW_LABELS


class CellOut(BaseModel):
    id: int
    area_px: int
    centroid: list[float] = Field(description="(row, col) in the original image's pixels.")
    bbox: list[int] = Field(description="(row0, col0, row1, col1) in the original image's pixels.")
    area_um2: float | None = None
    touches_border: bool = False
    label: str | None = Field(description="The reviewer's class (or 'excluded'); null until a reviewer gives one.")
    ai_label: str | None = Field(description="The cell-level model's suggestion; null: no AI suggestion.")
    ai_confidence: float | None
    final_label: str = Field(description="What the cell counts as: label, else 'edge' for a cell cut by the field's "
                             "edge (not counted), else ai_label, else 'unclassified'.")
    reviewed_by: str | None
    reviewed_at: str | None = None


class FlagWords(BaseModel):
    title: str
    problem: str = Field(description="What is wrong, in plain words.")
    action: str = Field(description="What to do.")


class Change(BaseModel):
    target: Literal["case", "field", "cell", "differential", "fields"]
    field_id: int | None = None
    field_number: int | None = Field(default=None, description="The field's 1-based position in the case.")
    cell_id: int | None = None
    before: str = Field(description="In words, e.g. 'Pre (AI)', 'blast (AI)', 'not verified'.")
    after: str = Field(description="In words, e.g. 'Benign', 'lymphocyte', 'unassessable', 'verified by alice'.")


class Amendment(BaseModel):
    n: int
    by: str
    at: str | None
    reason: str
    what: str = Field(description="What changed, in words: 'field 4: Pre (AI) → Benign'.")
    before: Any
    after: Any
    changes: list[Change] = Field(default=[], description="Each thing changed, with before and after in words "
                                  "(empty for amendments recorded before leukodx kept them).")


class AnalysisResult(BaseModel):
    name: str
    label: str | None = Field(description="The AI's suggested class; null when the image could not be analysed.")
    probabilities: dict[str, float]
    confidence: float = Field(description="Calibrated probability of `label`.")
    malignant_probability: float
    cell_count: int
    flag: str = Field(description="ok, low_confidence, out_of_distribution or unreadable.")
    flag_reason: str = ""
    size_note: str = ""
    rbc_diameter_px: float | None = Field(default=None, description="Estimated red-cell diameter in the image's "
                                          "pixels; null when no red cells could be measured.")
    scale_factor: float | None = Field(default=None, description="The image was resampled by this before the "
                                       "models (red cells to the training size); null when its scale is unknown.")
    um_per_px: float | None = Field(default=None, description="Micrometres per pixel, from red cells 7.5 um across.")
    ood_score: float | None = None
    cells: list[Cell] = []
    timings_ms: dict[str, float] = {}


class Summary(BaseModel):
    n_fields: int
    n_analysed: int
    label: str | None
    confidence: float
    malignant_probability: float
    mean_probabilities: dict[str, float]
    total_cell_count: int
    flags: dict[str, int]
    needs_review: bool
    reasons: list[str] = []


class AnalyzeOut(BaseModel):
    results: list[AnalysisResult]
    summary: Summary
    notice: str = "Decision support only: a clinician reviews every result."


class CaseIn(BaseModel):
    reference: str = Field(min_length=1, max_length=100, description="The smear or slide reference; no patient names.")
    accession: str = Field(default="", max_length=64, description="The lab's accession number (trimmed); another "
                           "case with the same one is allowed but named in `warnings`.")
    patient_id: str = Field(default="", max_length=64, description="The patient's identifier in the hospital (e.g. "
                            "the MRN; no names). FHIR: the report's subject.")
    note: str = Field(default="", max_length=2000)
    specimen: str = Field(default="Peripheral blood", max_length=200)
    stain: str = Field(default="", max_length=100, description="e.g. Wright-Giemsa, May-Grünwald-Giemsa.")


class ReviewOut(BaseModel):
    decision: str | None
    label: str | None
    note: str
    reviewed_by: str | None
    reviewed_at: str | None


class FieldOut(BaseModel):
    id: int
    number: int = Field(default=0, description="The field's 1-based position in the case (as pages number it).")
    name: str
    sha256: str
    width: int
    height: int
    label: str | None
    probabilities: dict[str, float]
    confidence: float
    malignant_probability: float
    cell_count: int
    flag: str
    flag_reason: str = Field(description="The analysis's own reason (engineering terms); pages show flag_words.")
    flag_words: FlagWords
    size_note: str
    image_url: str
    overlay_url: str | None
    heatmap_url: str | None = Field(description="The stored heat map (PNG); null until it was first computed.")
    heatmap_on_demand_url: str | None = Field(
        default=None, description="The field's heat map whenever it is wanted: computed on the first GET and kept, "
        "answered with a 303 to the stored PNG (bearer token or login session, like image_url).")
    uploaded_by: str
    uploaded_at: str | None
    review: ReviewOut
    assessable: bool = Field(default=True, description="Counts in the reviewed case call and the differential: "
                             "false when declared unassessable, or when the AI made no class call (no smear, blank) "
                             "and no reviewer overrode it with a class.")
    decision_suggested: Literal["confirm", "unassessable"] = Field(
        default="confirm", description="The decision a page preselects: 'unassessable' when the AI made no class call.")
    cells: list[CellOut] = []


class AiOut(BaseModel):
    label: str | None
    confidence: float | None
    malignant_probability: float | None
    n_fields: int
    total_cell_count: int
    summary: dict[str, Any]
    confident: bool = Field(default=False, description="The case call's confidence is at or above "
                            "`confidence_threshold` (the analyser's low-confidence threshold, which the case rule "
                            "uses): only then do pages offer a one-click confirm.")
    confidence_threshold: float | None = None


class UnassessableField(BaseModel):
    field_id: int
    number: int = Field(description="The field's 1-based position in the case.")
    name: str
    reason: str


class CaseOut(BaseModel):
    id: int
    reference: str
    note: str
    created_by: str
    created_at: str | None
    updated_at: str | None
    status: Literal["unreviewed", "reviewed"]
    flagged: bool
    ai: AiOut
    review: ReviewOut
    specimen: str = ""
    stain: str = ""
    locked: bool = Field(default=False, description="Signed off: changes need an amendment_reason (else 409).")
    amended: bool = False
    amendments: list[Amendment] = []
    accession: str = ""
    patient_id: str = ""
    differential: dict[str, int] = Field(default={}, description="The case's differential count {class: n}: each "
                                         "cell as a reviewer classified it, else the AI's pre-classification. It is "
                                         "the reviewer's only when `differential_source` is 'verified'.")
    blast_percent: float | None = Field(default=None, description="100 * blasts / cells counted, over "
                                        "`differential` (see `differential_source`).")
    ai_differential: dict[str, int] = Field(default={}, description="The AI's pre-classification alone.")
    ai_blast_percent: float | None = None
    n_cells: int = 0
    n_cells_reviewed: int = Field(default=0, description="Cells a reviewer gave a class (corrections).")
    n_cells_counted: int = Field(default=0, description="Leukocytes counted in `differential` (not counted: "
                                 "artefacts, excluded, unclassified and the like).")
    n_cells_target_reached: bool = False
    differential_target: int = Field(default=100, description="Leukocytes to count (set when the case was made).")
    differential_verified: bool = False
    differential_verified_by: str | None = None
    differential_verified_at: str | None = None
    differential_note: str = ""
    differential_source: Literal["ai", "verified"] = Field(
        default="ai", description="'ai': the AI pre-classification with the reviewer's corrections so far, not "
        "verified; 'verified': a reviewer verified every counted cell (POST .../differential/verify).")
    unassessable_fields: list[UnassessableField] = []
    n_fields_reviewed: int | None = None
    reviewed_fields_label: str | None = Field(
        default=None, description="The case rule over the fields with the reviewer's field calls taken into account.")
    warnings: list[str] = Field(default=[], description="What to look at before signing off; a duplicate reference.")
    fields: list[FieldOut] = []


class CaseList(BaseModel):
    total: int
    cases: list[CaseOut]


class Skipped(BaseModel):
    file: str
    field_id: int | None = Field(description="The field that already holds this image.")
    reason: str


class UploadOut(BaseModel):
    case: CaseOut = Field(description="The case with its updated AI summary (its fields: GET /api/v1/cases/{id}).")
    added: list[FieldOut]
    skipped: list[Skipped] = Field(default=[], description="Images not added: already a field of this case.")


class Decision(BaseModel):
    decision: Literal["confirm", "override"]
    label: str | None = Field(default=None, max_length=100, description="Required to override: one of the model's "
                              "classes (GET /readyz: models.classes; another answers 422); ignored to confirm.")
    note: str = Field(default="", max_length=2000)


class FieldDecision(Decision):
    field_id: int = Field(ge=1, le=MAX_ID)
    decision: Literal["confirm", "override", "unassessable"] = Field(  # type: ignore[assignment]
        description="confirm, override (with label), or unassessable (the field is left out of the case call and "
        "the differential; give the reason in note).")


AMENDMENT = ("Why a signed-off case is changed. Without it a signed-off case answers 409. "
             + case_logic.AMENDMENT_RULE)


class ReviewIn(BaseModel):
    case: Decision | None = Field(default=None, description="The reviewer's call for the whole case (sign-off).")
    fields: list[FieldDecision] = Field(default=[], max_length=1000)
    amendment_reason: str | None = Field(default=None, max_length=1000, description=AMENDMENT)


class CellChange(BaseModel):
    id: int = Field(ge=0, le=MAX_ID)
    label: CellLabel | None = Field(description="The class, 'excluded' (left out of the count), or null to undo.")


class CellsIn(BaseModel):
    cells: list[CellChange] = Field(min_length=1, max_length=10000)
    amendment_reason: str | None = Field(default=None, max_length=1000, description=AMENDMENT)


class CaseCellChange(CellChange):
    field_id: int = Field(ge=1, le=MAX_ID)


class CaseCellsIn(BaseModel):
    cells: list[CaseCellChange] = Field(min_length=1, max_length=10000)
    amendment_reason: str | None = Field(default=None, max_length=1000, description=AMENDMENT)


class VerifyIn(BaseModel):
    note: str = Field(default="", max_length=2000)
    amendment_reason: str | None = Field(default=None, max_length=1000, description=AMENDMENT)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem},
    503: {"model": Problem}}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 413: {"model": Problem}, 415: {"model": Problem}, 504: {"model": Problem}}
LOCK_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 409: {"model": Problem, "description": "Signed off: send amendment_reason to amend it."}}


# --- helpers ---------------------------------------------------------------------------------------------

def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def case_out(request: Request, db, case_id: int) -> dict:
    """The case with its fields, as GET /cases/{id} answers it."""
    return case_logic.case_dict(case_logic.get_case(db, case_id), request.app.state.ctx.service)


@contextmanager
def locked_as_409() -> Iterator[None]:
    """A signed-off case: the API's 409 names the field to send (pages say it in their words)."""
    try:
        yield
    except case_logic.Locked as exc:
        raise HTTPException(409, detail=exc.api_message) from None


def result_dict(name: str, r) -> dict:
    d = jsonable(r.to_dict())
    d["name"] = name
    d.pop("path", None)
    d["probabilities"] = {k: float(v) for k, v in (d.get("probabilities") or {}).items()}
    return d


async def analyse(request: Request, images: list[GoodImage], *, heatmap: bool, render: bool) -> list[tuple]:
    ctx = request.app.state.ctx
    side = ctx.settings.display_max_side
    out = []
    for img in images:
        def job(analyzer, img=img):
            rgb = img.pixels()
            r = analyzer.analyze(rgb, name=img.name, heatmap=heatmap)
            small = shrink(rgb, r, side) if render else None
            ov = overlay_png(*small, captioned=False) if small else None
            hm = heatmap_png(*small, captioned=False) if small and heatmap and r.heatmap is not None else None
            r.mask = r.instances = r.heatmap = None  # drawn; not kept (memory)
            img.rgb = None
            return r, ov, hm

        out.append((img, *await ctx.service.run(job)))
    return out


# --- endpoints -------------------------------------------------------------------------------------------

@router.post("/analyze", response_model=AnalyzeOut, responses=UPLOAD_ERRORS, summary="Analyse fields without storing")
async def analyze(
    request: Request,
    who: ApiUser,
    files: Annotated[list[UploadFile], File(description="One or more field images (JPEG, PNG, TIFF, BMP).")],
    heatmap: bool = Query(False, description="Also compute the heat map (slower)."),
):
    """Analyse one or more smear field images and answer with the AI's suggestion for each. Nothing is stored."""
    s = request.app.state.ctx.settings
    images = await check_uploads(files, s.max_files, s.max_file_bytes)
    done = await analyse(request, images, heatmap=heatmap, render=False)
    summary = case_logic.summarize(request.app.state.ctx.service, [r for _, r, _, _ in done])
    from dataclasses import asdict

    return {"results": [result_dict(img.name, r) for img, r, _, _ in done], "summary": jsonable(asdict(summary))}


@router.post("/cases", response_model=CaseOut, status_code=201, responses=ERRORS, summary="Create a case")
def create_case(request: Request, body: CaseIn, who: ApiUser, db: Db):
    """A new case for one smear. Use the lab's smear reference, not the patient's name; `accession` and
    `patient_id` (optional) are the lab's accession number and the hospital's patient identifier. Another case
    with the same reference or accession number is allowed (a smear may be re-examined) but named in
    `warnings`. The case's differential target is the server's LEUKODX_DIFFERENTIAL_TARGET."""
    case = case_logic.create_case(db, body.reference, body.note, who.name, body.specimen, body.stain,
                                  accession=body.accession, patient_id=body.patient_id,
                                  differential_target=request.app.state.ctx.settings.differential_target)
    out = case_out(request, db, case.id)
    dups = [case_logic.duplicate_warning(case_logic.same_reference(db, case.reference, but=case.id)),
            case_logic.duplicate_accession_warning(case_logic.same_accession(db, case.accession, but=case.id))]
    out["warnings"] = [w for w in dups if w] + out["warnings"]
    return out


@router.get(
    "/cases",
    response_model=CaseList,
    responses={**ERRORS, 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
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
    offset: int = Query(0, ge=0, le=MAX_ID),
):
    """The cases, newest first. `format=csv` answers a CSV file, one row per case."""
    rows, total = case_logic.list_cases(db, q, status, flagged, limit, offset)
    if format == "csv":
        from leukodx.web.db import audit

        audit(db, who.name, "cases.export", "cases", n=len(rows), q=q, status=status, flagged=flagged)
        db.commit()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
        return Response(
            case_logic.cases_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="leukodx-cases-{stamp}.csv"'},
        )
    threshold = case_logic.confidence_threshold(request.app.state.ctx.service)
    return {"total": total, "cases": [case_logic.case_dict(c, threshold=threshold) for c in rows]}


@router.get("/cases/{case_id}", response_model=CaseOut, responses=ERRORS, summary="One case with its fields")
def get_case(request: Request, case_id: CaseId, who: ApiUser, db: Db):
    return case_out(request, db, case_id)


@router.post(
    "/cases/{case_id}/images", response_model=UploadOut, status_code=201,
    responses={**UPLOAD_ERRORS, **LOCK_ERRORS, 200: {"model": UploadOut, "description": "Nothing new: every "
                                                     "image was already a field of this case (see skipped)."}},
    summary="Upload and analyse fields of a case",
)
async def upload_images(
    request: Request,
    response: Response,
    case_id: CaseId,
    who: ApiUser,
    files: Annotated[list[UploadFile], File(description="One or more field images (JPEG, PNG, TIFF, BMP).")],
    amendment_reason: Annotated[str | None, Form(max_length=1000, description=AMENDMENT)] = None,
):
    """Each image is checked, analysed, stored under its content hash and added to the case in one transaction.
    If any file is rejected, nothing is stored. An image already in the case (same SHA-256) is not added again:
    `skipped` says so (201 when something was added, 200 when nothing was). A signed-off case answers 409
    unless `amendment_reason` is given."""
    import hashlib

    ctx = request.app.state.ctx
    s = ctx.settings

    def existing() -> set[str]:
        with ctx.sessions() as db:
            case, hashes = case_logic.field_hashes(db, case_id)
            with locked_as_409():
                case_logic.require_unlocked(case, amendment_reason, "adding fields")
            return hashes

    known = await run_in_threadpool(existing)
    images = await check_uploads(files, s.max_files, s.max_file_bytes)
    in_case: list[tuple[str, str]] = []  # (file, sha256) of images already a field of the case
    twice: list[dict] = []
    fresh, seen = [], set()
    for img in images:
        digest = hashlib.sha256(img.data).hexdigest()
        if digest in known:
            in_case.append((img.name, digest))
        elif digest in seen:
            twice.append({"file": img.name, "sha256": digest, "reason": "The same image (identical content) was "
                          "sent twice in this upload; it was added once."})
        else:
            seen.add(digest)
            fresh.append(img)
    done = await analyse(request, fresh, heatmap=s.heatmap_on_upload, render=True) if fresh else []

    def store():
        blobs: list[tuple[bytes, str]] = []
        for img, _, ov, hm in done:
            blobs += [(img.data, img.ext)] + ([(ov, "png")] if ov else []) + ([(hm, "png")] if hm else [])
        names = iter(ctx.store.put_all(blobs))
        items = []
        for img, r, ov, hm in done:
            d = result_dict(img.name, r)
            image_file = next(names)
            items.append({
                "sha256": image_file.split(".")[0],
                "image_file": image_file,
                "overlay_file": next(names) if ov else None,
                "heatmap_file": next(names) if hm else None,
                "display_name": img.name,
                "width": img.width,
                "height": img.height,
                "label": d.get("label"),
                "probabilities": d.get("probabilities") or {},
                "confidence": float(d.get("confidence") or 0.0),
                "malignant_probability": float(d.get("malignant_probability") or 0.0),
                "cell_count": int(d.get("cell_count") or 0),
                "flag": d.get("flag") or "ok",
                "flag_reason": d.get("flag_reason") or "",
                "size_note": d.get("size_note") or "",
                "result": d,
            })
        with ctx.sessions() as db:
            case = case_logic.lock_case(db, case_id, light=True)
            new, late = case_logic.add_fields(db, case, items, ctx.service, who.name,
                                              amendment_reason) if items else ([], [])
            for sk in twice:
                sk["field_id"] = next((f.id for f in case.fields if f.sha256 == sk["sha256"]), None)
            dups = [case_logic.duplicate_skip(case, digest, name) for name, digest in in_case]
            return {"case": case_logic.case_dict(case, threshold=case_logic.confidence_threshold(ctx.service)),
                    "added": [case_logic.field_dict(f) for f in new],
                    "skipped": [d for d in dups if d] + twice + late}

    out = await run_in_threadpool(store)
    if not out["added"]:
        response.status_code = 200
    return out


@router.patch("/cases/{case_id}/review", response_model=CaseOut, responses=LOCK_ERRORS, summary="Review a case")
def review_case(request: Request, case_id: CaseId, body: ReviewIn, who: ApiUser, db: Db):
    """Confirm or override the AI's call for the case (the sign-off) and/or for single fields, with a note; a
    field may also be declared `unassessable` (no smear, blank, unreadable: give the reason in `note`), which leaves
    it out of the reviewed case call and the differential. The AI's output is kept unchanged beside the
    reviewer's decision. Once signed off the case is locked: a change answers 409 unless `amendment_reason` is
    given; each amendment is kept in `amendments`, with its `changes` (before and after in words)."""
    case = case_logic.lock_case(db, case_id)
    with locked_as_409():
        case_logic.review(
            db, case, who.name, body.case.model_dump() if body.case else None, [f.model_dump() for f in body.fields],
            body.amendment_reason, classes=request.app.state.ctx.service.classes,
        )
    return case_out(request, db, case_id)


@router.patch(
    "/cases/{case_id}/fields/{field_id}/cells", response_model=CaseOut, responses=LOCK_ERRORS,
    summary="Reclassify cells of a field",
)
def review_cells(request: Request, case_id: CaseId, field_id: Annotated[int, Path(ge=1, le=MAX_ID)], body: CellsIn,
                 who: ApiUser, db: Db):
    """Give cells of a field the reviewer's class (or exclude them, or undo with null). The case's differential
    and blast % are recomputed; the AI's suggestions and its own differential are kept. A signed-off case answers
    409 unless `amendment_reason` is given."""
    case = case_logic.lock_case(db, case_id)
    with locked_as_409():
        case_logic.review_cells(db, case, field_id, [c.model_dump() for c in body.cells], who.name,
                                body.amendment_reason)
    return case_out(request, db, case_id)


@router.patch("/cases/{case_id}/cells", response_model=CaseOut, responses=LOCK_ERRORS,
              summary="Reclassify cells of any fields of a case (the gallery's batch)")
def review_case_cells(request: Request, case_id: CaseId, body: CaseCellsIn, who: ApiUser, db: Db):
    """Give cells of any fields of the case a class in one transaction: `{"cells": [{"field_id", "id",
    "label"}]}`, label a class, 'excluded', or null (back to the AI's pre-classification). Answers the case. A
    real change takes the differential's verification back. A signed-off case answers 409 unless
    `amendment_reason` is given."""
    case = case_logic.lock_case(db, case_id)
    with locked_as_409():
        case_logic.review_case_cells(db, case, [c.model_dump() for c in body.cells], who.name, body.amendment_reason)
    return case_out(request, db, case_id)


@router.post("/cases/{case_id}/differential/verify", response_model=CaseOut, responses=LOCK_ERRORS,
             summary="Verify the differential")
def verify_differential(request: Request, case_id: CaseId, who: ApiUser, db: Db, body: VerifyIn | None = None):
    """The reviewer has checked the class of every counted leukocyte (after reclassifying what was wrong): the
    differential becomes theirs (`differential_source`: 'verified', with who and when). Any later change of a
    cell's class, or of which fields count, takes it back. 422 while a counted cell has no class; a signed-off
    case answers 409 unless `amendment_reason` is given."""
    body = body or VerifyIn()
    case = case_logic.lock_case(db, case_id)
    with locked_as_409():
        case_logic.verify_differential(db, case, who.name, body.note, body.amendment_reason)
    return case_out(request, db, case_id)


@router.get(
    "/cases/{case_id}/fhir", responses={**ERRORS, 200: {"content": {"application/fhir+json": {
        "schema": {"type": "object"}}}}}, summary="The case as a FHIR R4 DiagnosticReport",
)
def case_fhir(request: Request, case_id: CaseId, who: ApiUser, db: Db):
    """A FHIR R4 DiagnosticReport with its Observations contained (the class call, the blast %, the differential
    count). status: `preliminary` before sign-off, `final` after, `amended` after an amendment."""
    import json

    from leukodx.web.fhir import diagnostic_report

    case = case_logic.get_case(db, case_id)
    body = diagnostic_report(case, request.app.state.ctx.settings)
    return Response(json.dumps(body), media_type="application/fhir+json")


@router.get(
    "/fields.csv", responses={**ERRORS, 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    summary="Fields of the cases as CSV (one row per field)",
)
def fields_csv(
    who: ApiUser,
    db: Db,
    case_id: int | None = Query(None, ge=1, le=MAX_ID, description="Only this case's fields."),
    q: str = Query("", max_length=100, description="Search the reference, accession number, patient identifier, "
                   "note and author."),
    status: Literal["all", "unreviewed", "reviewed"] = "all",
    flagged: bool | None = None,
    limit: int = Query(200, ge=1, le=10000),
):
    """Beside the case CSV (`GET /api/v1/cases?format=csv`): one row per field, with its AI call, flag in words,
    the reviewer's call and who made it, and its cells' counts."""
    from leukodx.web.db import audit

    if case_id is not None:
        rows = [case_logic.get_case(db, case_id)]
    else:
        rows, _ = case_logic.list_cases(db, q, status, flagged, limit, 0)
        rows = [case_logic.get_case(db, c.id) for c in rows] if rows else []
    audit(db, who.name, "fields.export", "cases", n=len(rows), case_id=case_id)
    db.commit()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    name = f"leukodx-case-{case_id}-fields-{stamp}.csv" if case_id else f"leukodx-fields-{stamp}.csv"
    return Response(case_logic.fields_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.post("/cases/{case_id}/confirm-unflagged", response_model=CaseOut, responses=LOCK_ERRORS,
             summary="Confirm the AI's call of every unflagged, unreviewed field")
def confirm_unflagged(request: Request, case_id: CaseId, who: ApiUser, db: Db):
    """Confirms the AI's call of each field that has no flag and no review yet (flagged fields stay for you)."""
    case = case_logic.lock_case(db, case_id)
    with locked_as_409():
        case_logic.confirm_unflagged(db, case, who.name)
    return case_out(request, db, case_id)


@router.delete("/cases/{case_id}", status_code=204, responses=ERRORS, summary="Delete a case (admin)")
def delete_case(request: Request, case_id: CaseId, who: ApiAdmin, db: Db):
    case = case_logic.get_case(db, case_id)
    for name in case_logic.delete_case(db, case, who.name):
        request.app.state.ctx.store.delete(name)
    return Response(status_code=204)
