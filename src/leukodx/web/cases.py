"""Case logic shared by the pages and the API: create, add analysed fields, review, list, export.

Every function that changes a case does it in ONE transaction, with its audit entry inside it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from leukodx import CLASSES
from leukodx.errors import LeukodxError
from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.web.db import Case, Field, audit, utcnow

DECISIONS = ("confirm", "override")


class NotFound(LeukodxError):
    pass


class Invalid(LeukodxError):
    pass


def clean_reference(reference: str) -> str:
    ref = " ".join((reference or "").split())
    if not ref:
        raise Invalid("The smear reference is empty.", "Type the lab's smear or slide number, e.g. S-2024-0113.")
    if len(ref) > 100:
        raise Invalid("The smear reference is longer than 100 characters.", "Use the short lab reference.")
    return ref


def create_case(db: Session, reference: str, note: str, actor: str) -> Case:
    case = Case(reference=clean_reference(reference), note=(note or "").strip()[:2000], created_by=actor)
    db.add(case)
    db.flush()
    audit(db, actor, "case.create", f"case:{case.id}", reference=case.reference)
    db.commit()
    return case


def lock_case(db: Session, case_id: int) -> Case:
    """Start a write transaction on the case BEFORE reading it, so concurrent uploads to one case are
    serialised (SQLite: the write lock; PostgreSQL: the row lock) and its summary never loses a field."""
    done = db.execute(update(Case).where(Case.id == case_id).values(updated_at=utcnow()))
    if getattr(done, "rowcount", 0) == 0:  # an UPDATE's CursorResult
        raise NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return get_case(db, case_id, fresh=True)


def get_case(db: Session, case_id: int, fresh: bool = False) -> Case:
    stmt = select(Case).where(Case.id == case_id).options(selectinload(Case.fields))
    if fresh:
        stmt = stmt.execution_options(populate_existing=True)
    case = db.scalar(stmt)
    if case is None:
        raise NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return case


def field_result(f: Field) -> FieldResult:
    return FieldResult(
        path=f.display_name, label=f.label, probabilities=dict(f.probabilities or {}), confidence=f.confidence,
        malignant_probability=f.malignant_probability, cell_count=f.cell_count, flag=f.flag,
        flag_reason=f.flag_reason,
    )


def summarize(analyzer, case_or_results: Case | list[FieldResult]) -> CaseSummary:
    """The case rule (leukodx.inference.summary.summarize_case, as `predict` applies it) over a case's fields,
    with the analyzer's classes and low-confidence threshold."""
    from leukodx.inference.summary import summarize_case

    results = case_or_results if isinstance(case_or_results, list) else [field_result(f) for f in case_or_results.fields]
    classes = list(getattr(analyzer, "classes", None) or CLASSES)
    return summarize_case(results, classes, float(getattr(analyzer, "low_confidence", 0.5)))


def apply_summary(case: Case, summary: CaseSummary) -> None:
    case.n_fields = len(case.fields)
    case.ai_label = summary.label
    case.ai_confidence = float(summary.confidence) if summary.label else None
    case.ai_malignant_probability = float(summary.malignant_probability) if summary.label else None
    case.total_cell_count = int(summary.total_cell_count)
    case.flagged = bool(summary.needs_review) or any(f.flag != "ok" for f in case.fields)
    case.summary = asdict(summary)


def add_fields(db: Session, case: Case, items: list[dict], analyzer, actor: str) -> list[Field]:
    """Add analysed fields (files already stored) and update the case summary, in one transaction."""
    new = []
    for item in items:
        f = Field(case=case, uploaded_by=actor, **item)
        db.add(f)
        new.append(f)
    db.flush()
    apply_summary(case, summarize(analyzer, case))
    case.updated_at = utcnow()
    for f in new:
        audit(db, actor, "field.add", f"case:{case.id}/field:{f.id}", sha256=f.sha256, label=f.label,
              confidence=round(f.confidence, 4), cell_count=f.cell_count, flag=f.flag)
    db.commit()
    return new


def _decide(decision: str, label: str | None, ai_label: str | None, what: str) -> str:
    if decision not in DECISIONS:
        raise Invalid(f"Unknown decision {decision!r}.", "Use confirm or override.")
    if decision == "confirm":
        if ai_label is None:
            raise Invalid(f"There is no AI call to confirm for {what}.", "Override it with your own call.")
        return ai_label
    if label not in CLASSES:
        raise Invalid(f"Overriding {what} needs a class.", f"Choose one of: {', '.join(CLASSES)}.")
    return label


def review(db: Session, case: Case, actor: str, case_review: dict | None, field_reviews: list[dict]) -> Case:
    """Apply the reviewer's decisions (case and/or fields) in one transaction. The AI's output is untouched."""
    now = utcnow()
    by_id = {f.id: f for f in case.fields}
    for fr in field_reviews:
        f = by_id.get(fr["field_id"])
        if f is None:
            raise NotFound(f"Case {case.id} has no field {fr['field_id']}.", "Reload the case page.")
        label = _decide(fr["decision"], fr.get("label"), f.label, f"field {f.id}")
        audit(db, actor, "field.review", f"case:{case.id}/field:{f.id}", decision=fr["decision"], label=label,
              ai_label=f.label, previous=f.review_label, note=fr.get("note") or "")
        f.review_decision, f.review_label = fr["decision"], label
        f.review_note = (fr.get("note") or "").strip()[:2000]
        f.reviewed_by, f.reviewed_at = actor, now
    if case_review:
        label = _decide(case_review["decision"], case_review.get("label"), case.ai_label, "the case")
        audit(db, actor, "case.review", f"case:{case.id}", decision=case_review["decision"], label=label,
              ai_label=case.ai_label, previous=case.review_label, note=case_review.get("note") or "")
        case.review_decision, case.review_label = case_review["decision"], label
        case.review_note = (case_review.get("note") or "").strip()[:2000]
        case.reviewed_by, case.reviewed_at = actor, now
    if not case_review and not field_reviews:
        raise Invalid("The review is empty.", "Give a case decision, field decisions, or both.")
    case.updated_at = now
    db.commit()
    return case


def delete_case(db: Session, case: Case, actor: str) -> list[str]:
    """Delete a case and its fields (the audit log keeps the record). Returns files no longer used."""
    names = {n for f in case.fields for n in (f.image_file, f.overlay_file, f.heatmap_file) if n}
    audit(db, actor, "case.delete", f"case:{case.id}", reference=case.reference, n_fields=len(case.fields))
    db.delete(case)
    db.flush()
    still = set()
    if names:
        for col in (Field.image_file, Field.overlay_file, Field.heatmap_file):
            still |= set(db.scalars(select(col).where(col.in_(names))))
    db.commit()
    return sorted(names - still)


def list_cases(db: Session, q: str = "", status: str = "all", flagged: bool | None = None,
               limit: int = 200, offset: int = 0) -> tuple[list[Case], int]:
    stmt = select(Case)
    if q:
        like = f"%{q.strip().lower()}%"
        stmt = stmt.where(or_(func.lower(Case.reference).like(like), func.lower(Case.note).like(like),
                              func.lower(Case.created_by).like(like)))
    if status == "unreviewed":
        stmt = stmt.where(Case.review_decision.is_(None))
    elif status == "reviewed":
        stmt = stmt.where(Case.review_decision.is_not(None))
    if flagged is not None:
        stmt = stmt.where(Case.flagged.is_(flagged))
    total = db.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = db.scalars(stmt.order_by(Case.created_at.desc(), Case.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes; they were stored in UTC)."""
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def final_label(obj) -> str | None:
    return obj.review_label or None


def field_dict(f: Field, url_prefix: str = "/files/") -> dict:
    return {
        "id": f.id,
        "name": f.display_name,
        "sha256": f.sha256,
        "width": f.width,
        "height": f.height,
        "label": f.label,
        "probabilities": f.probabilities or {},
        "confidence": f.confidence,
        "malignant_probability": f.malignant_probability,
        "cell_count": f.cell_count,
        "flag": f.flag,
        "flag_reason": f.flag_reason,
        "size_note": f.size_note,
        "image_url": url_prefix + f.image_file,
        "overlay_url": url_prefix + f.overlay_file if f.overlay_file else None,
        "heatmap_url": url_prefix + f.heatmap_file if f.heatmap_file else None,
        "uploaded_by": f.uploaded_by,
        "uploaded_at": iso(f.uploaded_at),
        "review": {
            "decision": f.review_decision, "label": f.review_label, "note": f.review_note,
            "reviewed_by": f.reviewed_by, "reviewed_at": iso(f.reviewed_at),
        },
    }


def case_dict(case: Case, with_fields: bool = True) -> dict:
    d = {
        "id": case.id,
        "reference": case.reference,
        "note": case.note,
        "created_by": case.created_by,
        "created_at": iso(case.created_at),
        "updated_at": iso(case.updated_at),
        "status": "reviewed" if case.review_decision else "unreviewed",
        "flagged": case.flagged,
        "ai": {
            "label": case.ai_label, "confidence": case.ai_confidence,
            "malignant_probability": case.ai_malignant_probability, "n_fields": case.n_fields,
            "total_cell_count": case.total_cell_count, "summary": case.summary or {},
        },
        "review": {
            "decision": case.review_decision, "label": case.review_label, "note": case.review_note,
            "reviewed_by": case.reviewed_by, "reviewed_at": iso(case.reviewed_at),
        },
    }
    if with_fields:
        d["fields"] = [field_dict(f) for f in case.fields]
    return d


CSV_COLUMNS = [
    "case_id", "reference", "created_at", "created_by", "n_fields", "ai_label", "ai_confidence",
    "ai_malignant_probability", "total_cell_count", "flagged", "status", "review_decision", "review_label",
    "reviewed_by", "reviewed_at", "review_note",
]


def _csv_safe(value) -> str:
    """Neutralise spreadsheet formulas in free text (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def cases_csv(cases: list[Case]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cases:
        w.writerow([
            c.id, _csv_safe(c.reference), iso(c.created_at), _csv_safe(c.created_by), c.n_fields, c.ai_label or "",
            "" if c.ai_confidence is None else f"{c.ai_confidence:.4f}",
            "" if c.ai_malignant_probability is None else f"{c.ai_malignant_probability:.4f}",
            c.total_cell_count, int(c.flagged), "reviewed" if c.review_decision else "unreviewed",
            c.review_decision or "", c.review_label or "", _csv_safe(c.reviewed_by or ""), iso(c.reviewed_at) or "",
            _csv_safe(c.review_note),
        ])
    return buf.getvalue()
