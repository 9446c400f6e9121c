"""The HTTP API, /api/v1 (documented at /docs and /openapi.json). Bearer tokens or a login session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

import numpy as np
from fastapi import APIRouter, File, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from leukodx import CLASSES
from leukodx.web import cases as case_logic
from leukodx.web.deps import ApiAdmin, ApiUser, Db
from leukodx.web.overlays import heatmap_png, overlay_png
from leukodx.web.uploads import GoodImage, check_uploads

router = APIRouter(prefix="/api/v1", tags=["api"])
Label = Literal["Benign", "Early", "Pre", "Pro"]
MAX_ID = 2**53  # ids fit SQLite/PostgreSQL integers (and JSON numbers)
CaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="The case's id.")]
assert get_args(Label) == CLASSES


# --- schemas ---------------------------------------------------------------------------------------------

class Problem(BaseModel):
    detail: Any = Field(description="What is wrong and what to do (a string, or a list of rejected files).")


class Cell(BaseModel):
    id: int
    area_px: int
    centroid: list[float]
    bbox: list[int]


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
    note: str = Field(default="", max_length=2000)


class ReviewOut(BaseModel):
    decision: str | None
    label: str | None
    note: str
    reviewed_by: str | None
    reviewed_at: str | None


class FieldOut(BaseModel):
    id: int
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
    flag_reason: str
    size_note: str
    image_url: str
    overlay_url: str | None
    heatmap_url: str | None
    uploaded_by: str
    uploaded_at: str | None
    review: ReviewOut


class AiOut(BaseModel):
    label: str | None
    confidence: float | None
    malignant_probability: float | None
    n_fields: int
    total_cell_count: int
    summary: dict[str, Any]


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
    fields: list[FieldOut] = []


class CaseList(BaseModel):
    total: int
    cases: list[CaseOut]


class UploadOut(BaseModel):
    case: CaseOut = Field(description="The case with its updated AI summary (its fields: GET /api/v1/cases/{id}).")
    added: list[FieldOut]


class Decision(BaseModel):
    decision: Literal["confirm", "override"]
    label: Label | None = Field(default=None, description="Required to override; ignored to confirm.")
    note: str = Field(default="", max_length=2000)


class FieldDecision(Decision):
    field_id: int = Field(ge=1, le=MAX_ID)


class ReviewIn(BaseModel):
    case: Decision | None = Field(default=None, description="The reviewer's call for the whole case (sign-off).")
    fields: list[FieldDecision] = Field(default=[], max_length=1000)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem},
    503: {"model": Problem}}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 413: {"model": Problem}, 415: {"model": Problem}, 504: {"model": Problem}}


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
            ov = overlay_png(rgb, r, side) if render else None
            hm = heatmap_png(rgb, r, side) if render and heatmap else None
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
    results = [r for _, r, _, _ in done]
    analyzer = request.app.state.ctx.service.analyzer
    summary = case_logic.summarize(analyzer, results)
    from dataclasses import asdict

    return {"results": [result_dict(img.name, r) for img, r, _, _ in done], "summary": jsonable(asdict(summary))}


@router.post("/cases", response_model=CaseOut, status_code=201, responses=ERRORS, summary="Create a case")
def create_case(body: CaseIn, who: ApiUser, db: Db):
    """A new case for one smear. Use the lab's smear reference, not the patient's name."""
    case = case_logic.create_case(db, body.reference, body.note, who.name)
    return case_logic.case_dict(case_logic.get_case(db, case.id))


@router.get(
    "/cases",
    response_model=CaseList,
    responses={**ERRORS, 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    summary="List cases (JSON or CSV)",
)
def list_cases(
    who: ApiUser,
    db: Db,
    q: str = Query("", max_length=100, description="Search the reference, note and author."),
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
    return {"total": total, "cases": [case_logic.case_dict(c, with_fields=False) for c in rows]}


@router.get("/cases/{case_id}", response_model=CaseOut, responses=ERRORS, summary="One case with its fields")
def get_case(case_id: CaseId, who: ApiUser, db: Db):
    return case_logic.case_dict(case_logic.get_case(db, case_id))


@router.post(
    "/cases/{case_id}/images", response_model=UploadOut, status_code=201, responses=UPLOAD_ERRORS,
    summary="Upload and analyse fields of a case",
)
async def upload_images(
    request: Request,
    case_id: CaseId,
    who: ApiUser,
    files: Annotated[list[UploadFile], File(description="One or more field images (JPEG, PNG, TIFF, BMP).")],
):
    """Each image is checked, analysed, stored under its content hash and added to the case in one transaction.
    If any file is rejected, nothing is stored."""
    ctx = request.app.state.ctx
    s = ctx.settings

    def exists():
        with ctx.sessions() as db:
            case_logic.get_case(db, case_id)

    await run_in_threadpool(exists)
    images = await check_uploads(files, s.max_files, s.max_file_bytes)
    done = await analyse(request, images, heatmap=s.heatmap_on_upload, render=True)

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
            case = case_logic.lock_case(db, case_id)
            new = case_logic.add_fields(db, case, items, ctx.service.analyzer, who.name)
            return {"case": case_logic.case_dict(case, with_fields=False),
                    "added": [case_logic.field_dict(f) for f in new]}

    return await run_in_threadpool(store)


@router.patch("/cases/{case_id}/review", response_model=CaseOut, responses=ERRORS, summary="Review a case")
def review_case(case_id: CaseId, body: ReviewIn, who: ApiUser, db: Db):
    """Confirm or override the AI's call for the case and/or for single fields, with a note.
    The AI's output is kept unchanged beside the reviewer's decision."""
    case = case_logic.lock_case(db, case_id)
    case_logic.review(
        db, case, who.name, body.case.model_dump() if body.case else None, [f.model_dump() for f in body.fields]
    )
    return case_logic.case_dict(case_logic.get_case(db, case_id))


@router.delete("/cases/{case_id}", status_code=204, responses=ERRORS, summary="Delete a case (admin)")
def delete_case(request: Request, case_id: CaseId, who: ApiAdmin, db: Db):
    case = case_logic.get_case(db, case_id)
    for name in case_logic.delete_case(db, case, who.name):
        request.app.state.ctx.store.delete(name)
    return Response(status_code=204)


def raise_for(status: int, detail) -> None:
    raise HTTPException(status, detail=detail)
