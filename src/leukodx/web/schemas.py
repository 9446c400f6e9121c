"""The API's request and answer models (its OpenAPI schemas), the id types and the error answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, Field

from leukodx.inference.types import CaseSummary
from leukodx.web import cells as cell_logic
from leukodx.web.cases import rules

MAX_ID = 2**53  # ids fit SQLite/PostgreSQL integers (and JSON numbers)
CaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="The case's id.")]


class Problem(BaseModel):
    detail: Any = Field(description="What is wrong and what to do (a string, or a list of rejected files).")


class Cell(BaseModel):
    id: int
    area_px: int
    centroid: list[float]
    bbox: list[int]
    ai_label: str | None = None
    ai_confidence: float | None = None


CellLabel = Literal[cell_logic.REVIEW_LABELS]  # type: ignore[valid-type]  # the cell classes, or 'excluded'


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
    scale_warning: str = Field(default="", description="Where a given scale makes the red cells measured far from "
                               "7.5 um: what to check; empty otherwise.")
    ood_score: float | None = None
    cell_model: str | None = Field(default=None, description="The cell model's version (a content hash).")
    cells: list[Cell] = []
    timings_ms: dict[str, float] = {}


class AnalyzeOut(BaseModel):
    results: list[AnalysisResult]
    summary: CaseSummary
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
    basis: Literal["confirmed_ai", "reviewer_call_same_as_unconfident_ai", "override", "reviewer_call_no_ai_call",
                   "unassessable"] | None = Field(
        default=None, description="Whose call it is, against the AI's call as it stands: a confident AI call "
        "confirmed; the reviewer's call where the AI's (a flagged field, a case call under its threshold) was "
        "the same; ...; null before review.")


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
    confidence_words: str = Field(default="", description="`confidence` as pages write it ('87 %'; never '100 %').")
    malignant_probability: float
    cell_count: int
    flag: str
    flag_reason: str = Field(description="The analysis's own reason (engineering terms); pages show flag_words.")
    flag_words: FlagWords
    size_note: str
    cell_model: str | None = Field(default=None, description="The version (a content hash) of the cell model that "
                                   "pre-classified its cells; null: analysed before leukodx recorded it.")
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
    models_loading: bool = Field(default=False, description="The models are not loaded yet (GET /readyz): "
                                 "`confident`, `confidence_threshold` (null) and `reviewed_fields_label` wait for them.")


class UnassessableField(BaseModel):
    field_id: int
    number: int = Field(description="The field's 1-based position in the case.")
    name: str
    reason: str
    reason_by: Literal["reviewer", "ai"] = Field(default="reviewer", description="'reviewer': the reviewer's note "
                                                  "(declared unassessable); 'ai': the AI's reason (no class call).")


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
    blast_percent_words: str = Field(default="–", description="`blast_percent` as pages write it: '12.3 %', "
                                     "'–' when no cell is counted.")
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
    verification_withdrawn: bool = Field(default=False, description="The answer to a change: it took back the "
                                         "differential's verification (POST .../differential/verify again).")


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
             + rules.AMENDMENT_RULE)


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


class ConfirmUnflaggedIn(BaseModel):
    confirm_malignant: list[int] = Field(default=[], max_length=1000, description="Numbers of the fields with "
                                         "a malignant AI call to confirm too; one not named answers 422.")


class VerifyIn(BaseModel):
    note: str = Field(default="", max_length=2000)
    amendment_reason: str | None = Field(default=None, max_length=1000, description=AMENDMENT)


ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": Problem} for status in (401, 403, 404, 422, 503)}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 413: {"model": Problem}, 415: {"model": Problem}, 504: {"model": Problem}}
LOCK_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 409: {"model": Problem, "description": "Signed off: send amendment_reason to amend it."}}
