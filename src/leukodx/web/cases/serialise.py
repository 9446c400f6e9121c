"""A case as the API (and the pages) answer it, and the case and field CSV exports."""

from __future__ import annotations

import csv
import io

from leukodx.web import cells as cell_logic
from leukodx.web import words
from leukodx.web.cases import rules
from leukodx.web.db import Case, Field

EMPTY_CELLS = cell_logic.cell_summary([])


def case_dict(case: Case, analysis=None, *, threshold: float | None = None) -> dict:
    """The case as the API answers it; with `analysis` (the app's AnalysisService: the case rule for the reviewed
    call) also its fields, review progress and warnings. `threshold`: the confident-call threshold when no
    `analysis` is given (`confidence_threshold`)."""
    with_fields = analysis is not None
    if threshold is None:
        threshold = rules.confidence_threshold(analysis)
    verified = bool(case.differential_verified)
    d = {
        "id": case.id, "reference": case.reference, "note": case.note, "created_by": case.created_by,
        "created_at": rules.iso(case.created_at), "updated_at": rules.iso(case.updated_at),
        "status": "reviewed" if case.review_decision else "unreviewed", "flagged": case.flagged,
        "ai": {
            "label": case.ai_label, "confidence": case.ai_confidence,
            "malignant_probability": case.ai_malignant_probability, "n_fields": case.n_fields,
            "total_cell_count": case.total_cell_count, "summary": case.summary or {},
            "confident": rules.ai_confident(case, threshold),
            "confidence_threshold": threshold, "models_loading": threshold is None,
        },
        "review": {**rules.review_of(case), "basis": rules.case_basis(case, threshold)},
        "specimen": case.specimen or "", "stain": case.stain or "",
        "locked": rules.is_signed_off(case), "amended": bool(case.amendments),
        "amendments": [{"changes": [], **a} for a in (case.amendments or [])],
        "accession": case.accession or "", "patient_id": case.patient_id or "",
    }
    cs = cell_logic.cell_summary(rules.counted_cells(case.fields)) if with_fields else (
        case.cell_summary or EMPTY_CELLS)
    for k in ("differential", "blast_percent", "ai_differential", "ai_blast_percent", "n_cells", "n_cells_reviewed"):
        d[k] = cs.get(k, EMPTY_CELLS[k])
    target, n_counted = case.differential_target or 100, int(cs.get("n_counted", 0))
    d.update(blast_percent_words=words.blast_percent(cs.get("blast_percent")), n_cells_counted=n_counted,
             n_cells_target_reached=n_counted >= target, differential_target=target, differential_verified=verified,
             differential_verified_by=case.differential_verified_by if verified else None,
             differential_verified_at=rules.iso(case.differential_verified_at) if verified else None,
             differential_note=case.differential_note or "", differential_source="verified" if verified else "ai")
    if with_fields:
        n_reviewed = sum(1 for f in case.fields if f.review_decision)
        reviewed = rules.reviewed_summary(analysis, case) if n_reviewed else None
        d.update(unassessable_fields=rules.unassessable_fields(case), n_fields_reviewed=n_reviewed,
                 fields=[field_dict(f, number=i) for i, f in enumerate(case.fields, start=1)],
                 reviewed_fields_label=reviewed.label if reviewed else None,
                 warnings=rules.sign_off_warnings(case, analysis.benign), cells_outlined=cells_outlined(case))
    return d


def field_dict(f: Field, number: int | None = None) -> dict:
    """A field as the API answers it; `number` is its 1-based position in the case (looked up when not given)."""
    if number is None:
        number = rules.field_number(f.case, f) if f.case is not None else 0
    return {
        "id": f.id,
        "number": number,
        "name": f.display_name,
        "sha256": f.sha256,
        "width": f.width,
        "height": f.height,
        "label": f.label,
        "probabilities": f.probabilities or {},
        "confidence": f.confidence,
        "confidence_words": words.model_percent(f.confidence),
        "malignant_probability": f.malignant_probability,
        "cell_count": f.cell_count,
        "flag": f.flag,
        "flag_reason": f.flag_reason,
        "flag_words": words.flag_words(f.flag, f.flag_reason),
        "size_note": f.size_note,
        "cell_model": f.cell_model,
        "image_url": f"/files/{f.image_file}",
        "overlay_url": f"/files/{f.overlay_file}" if f.overlay_file else None,
        "heatmap_url": f"/files/{f.heatmap_file}" if f.heatmap_file else None,
        "heatmap_on_demand_url": f"/cases/{f.case_id}/fields/{f.id}/heatmap",
        "uploaded_by": f.uploaded_by,
        "uploaded_at": rules.iso(f.uploaded_at),
        "review": {**rules.review_of(f), "basis": rules.field_basis(f)},
        "assessable": rules.is_assessable(f),
        "decision_suggested": rules.UNASSESSABLE if f.label is None else "confirm",
        "cells": [cell_dict(c) for c in (f.cells or [])],
    }


def cell_dict(c: dict) -> dict:
    return {
        "id": c["id"], "area_px": c.get("area_px", 0), "centroid": c.get("centroid") or [0.0, 0.0],
        "bbox": c.get("bbox") or [0, 0, 0, 0], "area_um2": c.get("area_um2"),
        "touches_border": bool(c.get("touches_border")),
        "label": c.get("label"), "ai_label": c.get("ai_label"), "ai_confidence": c.get("ai_confidence"),
        "final_label": cell_logic.final_class(c),
        "reviewed_by": c.get("reviewed_by"), "reviewed_at": c.get("reviewed_at"),
    }


def cells_outlined(case: Case) -> dict[str, int]:
    """The leukocytes outlined in the case's fields: `total`, `in_differential` (of the fields the differential
    counts: counted_cells), and those left out: of flagged fields not yet reviewed, and of unassessable fields."""
    n = {"total": 0, "in_differential": 0, "flagged_not_reviewed": 0, "unassessable": 0,
         "flagged_not_reviewed_fields": 0, "unassessable_fields": 0}
    for f in case.fields:
        k = len(f.cells or [])
        n["total"] += k
        key = "in_differential" if rules.counts(f) else "unassessable" if not rules.is_assessable(f) else "flagged_not_reviewed"
        n[key] += k
        if key != "in_differential" and k:
            n[key + "_fields"] += 1
    return n


CSV_COLUMNS = [
    "case_id", "reference", "created_at", "created_by", "n_fields", "ai_label", "ai_confidence",
    "ai_malignant_probability", "total_cell_count", "flagged", "status", "review_decision", "review_label",
    "reviewed_by", "reviewed_at", "review_note",
    # appended (issue 22); the columns above keep their order for the scripts that read them
    "accession", "patient_id", "differential_verified", "differential_verified_by",
    "review_basis",  # appended (issue 31)
]


def _csv_safe(value) -> str:
    """Neutralise spreadsheet formulas in free text (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(columns: list[str], rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([columns, *rows])
    return buf.getvalue()


def cases_csv(cases: list[Case], threshold: float | None = None) -> str:
    """One row per case; `threshold`: the confident-call threshold (rules.confidence_threshold) for review_basis."""
    return _csv(CSV_COLUMNS, ([
        c.id, _csv_safe(c.reference), rules.iso(c.created_at), _csv_safe(c.created_by), c.n_fields, c.ai_label or "",
        "" if c.ai_confidence is None else f"{c.ai_confidence:.4f}",
        "" if c.ai_malignant_probability is None else f"{c.ai_malignant_probability:.4f}",
        c.total_cell_count, int(c.flagged), "reviewed" if c.review_decision else "unreviewed", c.review_decision or "",
        c.review_label or "", _csv_safe(c.reviewed_by), rules.iso(c.reviewed_at) or "", _csv_safe(c.review_note),
        _csv_safe(c.accession), _csv_safe(c.patient_id), int(bool(c.differential_verified)),
        _csv_safe(c.differential_verified_by), rules.case_basis(c, threshold) or ""] for c in cases))


FIELD_CSV_COLUMNS = [
    "case_id", "reference", "field_id", "field_number", "name", "sha256", "ai_label", "ai_confidence",
    "ai_malignant_probability", "cell_count", "flag", "flag_text", "review_decision", "review_label", "reviewed_by",
    "reviewed_at", "review_note", "n_cells", "n_cells_reviewed", "blasts", "blast_percent", "ai_blast_percent",
    # appended (issue 22)
    "accession", "patient_id", "differential_verified", "differential_verified_by",
    "review_basis",  # appended (issue 31)
]


def fields_csv(cases: list[Case]) -> str:
    """One row per field of the cases (beside the case CSV, whose columns stay as they were)."""
    def row(c: Case, i: int, f: Field) -> list:
        cs = cell_logic.cell_summary([f.cells or []])
        return [c.id, _csv_safe(c.reference), f.id, i, _csv_safe(f.display_name), f.sha256, f.label or "",
                f"{f.confidence:.4f}" if f.label else "", f"{f.malignant_probability:.4f}" if f.label else "",
                f.cell_count, f.flag, _csv_safe(words.flag_text(f.flag, f.flag_reason)), f.review_decision or "",
                f.review_label or "", _csv_safe(f.reviewed_by), rules.iso(f.reviewed_at) or "",
                _csv_safe(f.review_note), cs["n_cells"], cs["n_cells_reviewed"], cs["differential"]["blast"],
                _csv_safe(cs["blast_percent"]), _csv_safe(cs["ai_blast_percent"]), _csv_safe(c.accession),
                _csv_safe(c.patient_id), int(bool(c.differential_verified)), _csv_safe(c.differential_verified_by),
                rules.field_basis(f) or ""]

    return _csv(FIELD_CSV_COLUMNS, (row(c, i, f) for c in cases for i, f in enumerate(c.fields, start=1)))
