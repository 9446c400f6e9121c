"""Case logic shared by the pages and the API: create, add analysed fields, review, list, export.

Every function that changes a case does it in ONE transaction, with its audit entry inside it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from leukodx.errors import LeukodxError
from leukodx.inference.cell_classes import UNIDENTIFIED
from leukodx.inference.summary import malignant_probability
from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.web import cells as cell_logic
from leukodx.web import words
from leukodx.web.db import Case, Field, FormSubmission, audit, utcnow

CASE_DECISIONS = ("confirm", "override")
# a field may also be declared unassessable (no smear, blank, out of focus...): it is left out of the reviewed
# case call and of the differential; a field with no class call of the AI counts as unassessable until a
# reviewer overrides it with a class
DECISIONS = (*CASE_DECISIONS, "unassessable")
UNASSESSABLE = "unassessable"
# Who may amend a signed-off case: any clinician (or admin), their own case or another's, with a reason; every
# amendment is recorded (who, when, reason, before, after) and shown on the case page, the report and in FHIR.
AMENDMENT_RULE = ("Any clinician may amend a signed-off case, their own or another clinician's, by giving a "
                  "reason; the amendment is recorded (who, when, reason, before and after) and shown on the case "
                  "page and the report.")


class NotFound(LeukodxError):
    pass


class Invalid(LeukodxError):
    pass


class Locked(LeukodxError):
    """The case is signed off and the change came without an amendment reason (answered 409).

    `message` is one short sentence for a page ("Case S-1 is signed off by alice: give a reason for the amendment
    to change it."); `api_message` names the request field an API client sends."""

    def __init__(self, problem: str, hint: str, api_hint: str = ""):
        super().__init__(problem, hint)
        self.api_hint = api_hint or hint

    @property
    def message(self) -> str:
        return f"{self.problem.rstrip('.')}: {self.hint[:1].lower()}{self.hint[1:]}"

    @property
    def api_message(self) -> str:
        return f"{self.problem.rstrip('.')}: {self.api_hint[:1].lower()}{self.api_hint[1:]}"


def is_signed_off(case: Case) -> bool:
    return case.review_decision is not None


def clean_amendment_reason(reason: str | None) -> str:
    return " ".join((reason or "").split())[:1000]


def require_unlocked(case: Case, amendment_reason: str | None, what: str) -> str:
    """'' for a case not signed off; the cleaned amendment reason for a signed-off one; Locked without one."""
    if not is_signed_off(case):
        return ""
    reason = clean_amendment_reason(amendment_reason)
    if not reason:
        raise Locked(f"Case {case.reference} is signed off by {case.reviewed_by or 'a clinician'}.",
                     "Give a reason for the amendment to change it.",
                     f"Send amendment_reason (why it is changed) with the request to amend it ({what}).")
    return reason


def add_amendment(case: Case, actor: str, reason: str, what: str, before, after,
                  changes: list[dict] | None = None) -> dict:
    """Append an amendment: who, when, why, `what` in words ("field 4: Pre (AI) → Benign"), the `before` and
    `after` records, and `changes`: one entry per thing changed, [{"target": "case" | "field" | "cell" |
    "differential" | "fields", "field_id", "field_number", "cell_id", "before", "after"}] in words."""
    entry = {"n": len(case.amendments or []) + 1, "by": actor, "at": iso(utcnow()), "reason": reason,
             "what": what, "before": before, "after": after, "changes": list(changes or [])}
    case.amendments = [*(case.amendments or []), entry]  # a new list: the JSON column sees the change
    return entry


def change(target: str, before: str, after: str, field: Field | None = None, number: int | None = None,
           cell_id: int | None = None) -> dict:
    return {"target": target, "field_id": field.id if field is not None else None,
            "field_number": number, "cell_id": cell_id, "before": before, "after": after}


def changes_words(changes: list[dict], most: int = 6) -> str:
    """The changes on one line: "field 4: Pre (AI) → Benign; field 5, cell 3: blast (AI) → lymphocyte"."""
    def one(ch: dict) -> str:
        where = {"case": "sign-off", "differential": "differential", "fields": "fields"}.get(ch["target"], "")
        if ch["target"] in ("field", "cell"):
            where = f"field {ch.get('field_number') or ch.get('field_id')}"
            if ch["target"] == "cell":
                where += f", cell {ch.get('cell_id')}"
        return f"{where}: {ch['before']} → {ch['after']}"

    parts = [one(ch) for ch in changes]
    if len(parts) > most:
        parts = [*parts[:most - 1], f"and {len(parts) - most + 1} more"]
    return "; ".join(parts)


def field_number(case: Case, f: Field) -> int:
    """A field's number: its 1-based position in the case (the same on every page, warning and export)."""
    for i, x in enumerate(case.fields, start=1):
        if x is f or x.id == f.id:
            return i
    return 0


def is_assessable(f: Field) -> bool:
    """Declared unassessable by a reviewer: no; confirmed or overridden: yes; not reviewed: when the AI made a
    class call (a field without one, e.g. no smear or blank, counts as unassessable)."""
    if f.review_decision == UNASSESSABLE:
        return False
    if f.review_decision in CASE_DECISIONS:
        return True
    return f.label is not None


def field_call_words(f: Field) -> str:
    """How a field is called now, in words: "Pre (AI)", "Benign", "unassessable", "unassessable (no AI call)"."""
    if f.review_decision == UNASSESSABLE:
        return UNASSESSABLE
    if f.review_decision in CASE_DECISIONS and f.review_label:
        return f.review_label
    return f"{f.label} (AI)" if f.label else f"{UNASSESSABLE} (no AI call)"


def case_call_words(case: Case) -> str:
    if not is_signed_off(case):
        return "not signed off"
    return f"{case.review_label or '?'}, signed off by {case.reviewed_by}"


def cell_class_words(c: dict) -> str:
    """A cell's class in words: the reviewer's ("lymphocyte", "excluded"), else "blast (AI)", else unclassified."""
    if c.get("label") in cell_logic.REVIEW_LABELS:
        return str(c["label"])
    ai = cell_logic.ai_class(c)
    return f"{ai} (AI)" if ai != cell_logic.UNCLASSIFIED else cell_logic.UNCLASSIFIED


def verification_words(case: Case) -> str:
    return f"verified by {case.differential_verified_by}" if case.differential_verified else "not verified"


def unverify(db: Session, case: Case, actor: str, why: str) -> dict | None:
    """A change of the counted cells takes the differential's verification back (audited); returns the change."""
    if not case.differential_verified:
        return None
    before = verification_words(case)
    audit(db, actor, "differential.unverify", f"case:{case.id}", why=why, was_verified_by=case.differential_verified_by,
          was_verified_at=iso(case.differential_verified_at))
    case.differential_verified = False
    case.differential_verified_by, case.differential_verified_at = None, None
    return change("differential", before, f"not verified ({why})")


def clean_reference(reference: str) -> str:
    ref = " ".join((reference or "").split())
    if not ref:
        raise Invalid("The smear reference is empty.", "Type the lab's smear or slide number, e.g. S-2024-0113.")
    if len(ref) > 100:
        raise Invalid("The smear reference is longer than 100 characters.", "Use the short lab reference.")
    return ref


def clean_identifier(value: str | None, what: str, example: str) -> str:
    """An accession number or patient identifier: trimmed, inner spaces collapsed, at most 64 characters."""
    text_ = " ".join((value or "").split())
    if len(text_) > 64:
        raise Invalid(f"The {what} is longer than 64 characters.", f"Use the lab's {what} as it is, e.g. {example}.")
    if any(ord(ch) < 32 for ch in text_):
        raise Invalid(f"The {what} holds control characters.", f"Type it again, e.g. {example}.")
    return text_


def same_accession(db: Session, accession: str, but: int | None = None) -> list[Case]:
    """Other cases with this accession number (case and spacing ignored); none for an empty one."""
    return _same(db, Case.accession, accession, but) if (accession or "").strip() else []


def _listed(others: list[Case], with_reference: bool = False) -> str:
    return ", ".join(f"case {c.id} ({f'{c.reference}, ' if with_reference else ''}created "
                     f"{(iso(c.created_at) or '?')[:10]} by {c.created_by})" for c in others[:5])


def duplicate_accession_warning(others: list[Case]) -> str:
    if not others:
        return ""
    return (f"Another case has the same accession number: {_listed(others, True)}. Check the accession number; if "
            "it is the same specimen, add its fields to the existing case instead.")


def same_reference(db: Session, reference: str, but: int | None = None) -> list[Case]:
    """Other cases with this smear reference (case and spacing ignored)."""
    return _same(db, Case.reference, reference, but)


def _same(db: Session, column, value: str, but: int | None) -> list[Case]:
    """Cases whose `column` equals `value` with case and spacing ignored, but case `but`."""
    stmt = select(Case).where(func.lower(column) == " ".join((value or "").split()).lower())
    if but is not None:
        stmt = stmt.where(Case.id != but)
    return list(db.scalars(stmt.order_by(Case.id)))


def duplicate_warning(others: list[Case]) -> str:
    if not others:
        return ""
    return (f"Another case has the same smear reference: {_listed(others)}. Check that this is a different smear; "
            "if it is the same smear, add its fields to the existing case instead.")


def create_case(db: Session, reference: str, note: str, actor: str, specimen: str = "", stain: str = "",
                form_token: str = "", *, accession: str = "", patient_id: str = "",
                differential_target: int = 100) -> Case:
    """A new case. With `form_token` (a one-time token of the page's form) a second submission of the same
    form makes no second case: FormSubmission's primary key refuses it (see `already_submitted`).
    `accession` and `patient_id` are optional ("" when not given); a duplicate accession is allowed (the API
    warns about it: `duplicate_accession_warning`). `differential_target`: Settings.differential_target."""
    ref = clean_reference(reference)
    acc = clean_identifier(accession, "accession number", "A24-001234")
    pid = clean_identifier(patient_id, "patient identifier", "MRN 00123456")
    case = Case(reference=ref, note=(note or "").strip()[:2000], created_by=actor,
                specimen=" ".join((specimen or "").split())[:200] or "Peripheral blood",
                stain=" ".join((stain or "").split())[:100], accession=acc, patient_id=pid,
                differential_target=max(1, int(differential_target)), differential_verified=False)
    if form_token:
        db.add(FormSubmission(token=form_token[:64], actor=actor))
        db.flush()  # the token first: a concurrent double submit waits here, then fails on the primary key
    db.add(case)
    db.flush()
    if form_token:
        row = db.get(FormSubmission, form_token[:64])
        if row is not None:
            row.result_url = f"/cases/{case.id}"
    others = same_reference(db, ref, but=case.id)
    audit(db, actor, "case.create", f"case:{case.id}", reference=case.reference, accession=case.accession,
          patient_id=case.patient_id, duplicate_of=[c.id for c in others],
          same_accession=[c.id for c in same_accession(db, acc, but=case.id)])
    db.commit()
    return case


def already_submitted(db: Session, form_token: str) -> str | None:
    """Where the first submission of this form went, or None when the token is new."""
    if not form_token:
        return None
    row = db.get(FormSubmission, form_token[:64])
    return None if row is None else (row.result_url or "/cases")


def lock_case(db: Session, case_id: int, light: bool = False) -> Case:
    """Start a write transaction on the case BEFORE reading it, so concurrent uploads to one case are
    serialised (SQLite: the write lock; PostgreSQL: the row lock) and its summary never loses a field."""
    done = db.execute(update(Case).where(Case.id == case_id).values(updated_at=utcnow()))
    if getattr(done, "rowcount", 0) == 0:  # an UPDATE's CursorResult
        raise NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return get_case(db, case_id, fresh=True, light=light)


def get_case(db: Session, case_id: int, fresh: bool = False, light: bool = False) -> Case:
    """The case with its fields; `light` leaves each field's full analysis result (the largest column) unread
    until it is used, which keeps an upload into a case of many fields short."""
    load = selectinload(Case.fields)
    stmt = select(Case).where(Case.id == case_id).options(load.defer(Field.result) if light else load)
    if fresh:
        stmt = stmt.execution_options(populate_existing=True)
    case = db.scalar(stmt)
    if case is None:
        raise NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return case


def field_hashes(db: Session, case_id: int) -> tuple[Case, set[str]]:
    """The case (without its fields) and the SHA-256 of its fields' images: what an upload checks first."""
    case = db.get(Case, case_id)
    if case is None:
        raise NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return case, set(db.scalars(select(Field.sha256).where(Field.case_id == case_id)))


def field_result(f: Field) -> FieldResult:
    return FieldResult(
        path=f.display_name, label=f.label, probabilities=dict(f.probabilities or {}), confidence=f.confidence,
        malignant_probability=f.malignant_probability, cell_count=f.cell_count, flag=f.flag,
        flag_reason=f.flag_reason,
    )


def summarize(analysis, case_or_results: Case | list[FieldResult]) -> CaseSummary:
    """The case rule over a case's fields: `analysis.summarize` (the app's AnalysisService, or an analyser: its
    classes, thresholds and case rule, as `predict` applies them)."""
    results = case_or_results if isinstance(case_or_results, list) else [field_result(f) for f in case_or_results.fields]
    return analysis.summarize(results)


def apply_summary(case: Case, summary: CaseSummary) -> None:
    case.n_fields = len(case.fields)
    case.ai_label = summary.label
    case.ai_confidence = float(summary.confidence) if summary.label else None
    case.ai_malignant_probability = float(summary.malignant_probability) if summary.label else None
    case.total_cell_count = int(summary.total_cell_count)
    case.flagged = bool(summary.needs_review) or any(f.flag != "ok" for f in case.fields)
    case.summary = asdict(summary)


def refresh_cells(case: Case) -> None:
    case.cell_summary = cell_logic.cell_summary(counted_cells(case.fields))


def duplicate_skip(case: Case, sha256: str, name: str) -> dict | None:
    """The 'skipped' answer for an image already in the case (same content), or None."""
    for i, f in enumerate(case.fields, start=1):
        if f.sha256 == sha256:
            return {"file": name, "field_id": f.id, "reason":
                    f"The same image (identical content) is already field {i} of this case"
                    f"{' (' + f.display_name + ')' if f.display_name else ''}; it was not added again, so its "
                    "cells are not counted twice."}
    return None


def add_fields(db: Session, case: Case, items: list[dict], analysis, actor: str,
               amendment_reason: str | None = None) -> tuple[list[Field], list[dict]]:
    """Add analysed fields (files already stored) and update the case summary, in one transaction. An image
    already in the case (same sha256) is skipped: returns (new fields, [{"file", "field_id", "reason"}])."""
    n = len(items)
    reason = require_unlocked(case, amendment_reason, f"adding {n} field{'s' if n != 1 else ''}")
    new, skipped = [], []
    before = {"n_fields": len(case.fields), "differential": (case.cell_summary or {}).get("differential")}
    for item in items:
        dup = duplicate_skip(case, item["sha256"], item.get("display_name", ""))
        if dup is not None:
            skipped.append(dup)
            continue
        item = dict(item)
        item.setdefault("cells", cell_logic.stored_cells((item.get("result") or {}).get("cells")))
        f = Field(case=case, uploaded_by=actor, **item)
        db.add(f)
        new.append(f)
    db.flush()
    if new:
        apply_summary(case, summarize(analysis, case))
        refresh_cells(case)
        case.updated_at = utcnow()
    for f in new:
        audit(db, actor, "field.add", f"case:{case.id}/field:{f.id}", sha256=f.sha256, label=f.label,
              confidence=round(f.confidence, 4), cell_count=f.cell_count, flag=f.flag)
    for sk in skipped:
        audit(db, actor, "field.skip_duplicate", f"case:{case.id}/field:{sk['field_id']}", file=sk["file"])
    unverified = unverify(db, case, actor, "fields added") if any(f.cells for f in new) else None
    if reason and new:
        n_before = before["n_fields"]
        added = ", ".join(f"field {field_number(case, f)}" + (f" ({f.display_name})" if f.display_name else "")
                          for f in new)
        changes = [change("fields", f"{n_before} field{'s' if n_before != 1 else ''}",
                          f"{len(case.fields)} fields (added {added})")]
        if unverified:
            changes.append(unverified)
        add_amendment(case, actor, reason, changes_words(changes), before,
                      {"n_fields": len(case.fields), "added": [f.display_name for f in new],
                       "differential": case.cell_summary.get("differential")}, changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what="fields added")
    db.commit()
    return new, skipped


def _decide(decision: str, label: str | None, ai_label: str | None, what: str, classes: Sequence[str],
            allowed: Sequence[str] = CASE_DECISIONS) -> str | None:
    """The label a decision gives: the AI's (confirm), the reviewer's class (override), None (unassessable)."""
    if decision not in allowed:
        raise Invalid(f"Unknown decision {decision!r} for {what}.", f"Use {' or '.join(allowed)}.")
    if decision == UNASSESSABLE:
        return None
    if decision == "confirm":
        if ai_label is None:
            raise Invalid(f"There is no AI call to confirm for {what}.", "Override it with your own call.")
        return ai_label
    if label is None or label not in classes:
        raise Invalid(f"Overriding {what} needs one of the model's classes"
                      + (f"; {label!r} is not one of them." if label else "."), f"Choose one of: {', '.join(classes)}.")
    return label


def _review_of(obj) -> dict:
    return {"decision": obj.review_decision, "label": obj.review_label, "note": obj.review_note,
            "reviewed_by": obj.reviewed_by, "reviewed_at": iso(obj.reviewed_at)}


def _same_decision(obj, decision: str, label: str | None, note: str, actor: str) -> bool:
    return (obj.review_decision == decision and obj.review_label == label and obj.reviewed_by == actor
            and (obj.review_note or "") == (note or "").strip()[:2000])


def review(db: Session, case: Case, actor: str, case_review: dict | None, field_reviews: list[dict],
           amendment_reason: str | None = None, *, classes: Sequence[str]) -> Case:
    """Apply the reviewer's decisions (case and/or fields) in one transaction; an override names one of `classes`
    (the analyser's, AnalysisService.classes); a field may also be declared `unassessable` (with the reason in
    its note). The AI's output is untouched.
    A signed-off case changes only with an amendment reason (else Locked); sending the very decisions it already
    holds, by the same reviewer (a double submit), changes nothing and needs none. A field decision that changes
    which cells are counted takes the differential's verification back."""
    if not case_review and not field_reviews:
        raise Invalid("The review is empty.", "Give a case decision, field decisions, or both.")
    now = utcnow()
    by_id = {f.id: f for f in case.fields}
    decided_fields = []
    for fr in field_reviews:
        f = by_id.get(fr["field_id"])
        if f is None:
            raise NotFound(f"Case {case.id} has no field {fr['field_id']}.", "Reload the case page.")
        decided_fields.append((f, fr, _decide(fr["decision"], fr.get("label"), f.label,
                                              f"field {field_number(case, f)}", classes, DECISIONS)))
    case_label = None
    if case_review:
        case_label = _decide(case_review["decision"], case_review.get("label"), case.ai_label, "the case", classes)
    signed = is_signed_off(case)
    if signed:
        unchanged = all(_same_decision(f, fr["decision"], lab, fr.get("note") or "", actor)
                        for f, fr, lab in decided_fields)
        if case_review:
            assert case_label is not None
            unchanged = unchanged and _same_decision(case, case_review["decision"], case_label,
                                                     case_review.get("note") or "", actor)
        if unchanged and not clean_amendment_reason(amendment_reason):
            return case  # the same decisions again: nothing to change, nothing to amend
        n = len(decided_fields)
        what = ("the sign-off" if case_review else "") + (" and " if case_review and n else "") + (
            f"the call of {n} field{'s' if n != 1 else ''}" if n else "")
        reason = require_unlocked(case, amendment_reason, f"changing {what}")
        before = {"case": _review_of(case), "fields": {str(f.id): _review_of(f) for f, _, _ in decided_fields}}
        words_before = {f.id: field_call_words(f) for f, _, _ in decided_fields}
        case_before = case_call_words(case)
    else:
        reason = ""
        before = None
        words_before, case_before = {}, ""
    counted_before = [f.id for f in case.fields if _counts(f)]
    for f, fr, label in decided_fields:
        audit(db, actor, "field.review", f"case:{case.id}/field:{f.id}", decision=fr["decision"], label=label,
              ai_label=f.label, previous=f.review_label, previous_decision=f.review_decision,
              note=fr.get("note") or "")
        f.review_decision, f.review_label = fr["decision"], label
        f.review_note = (fr.get("note") or "").strip()[:2000]
        f.reviewed_by, f.reviewed_at = actor, now
    if case_review:
        label = case_label or ""
        audit(db, actor, "case.review", f"case:{case.id}", decision=case_review["decision"], label=label,
              ai_label=case.ai_label, previous=case.review_label, note=case_review.get("note") or "")
        case.review_decision, case.review_label = case_review["decision"], label
        case.review_note = (case_review.get("note") or "").strip()[:2000]
        case.reviewed_by, case.reviewed_at = actor, now
    unverified = None
    if [f.id for f in case.fields if _counts(f)] != counted_before:
        refresh_cells(case)
        if any(f.cells for f, _, _ in decided_fields):
            unverified = unverify(db, case, actor, "fields counted changed")
    if reason:
        after = {"case": _review_of(case), "fields": {str(f.id): _review_of(f) for f, _, _ in decided_fields}}
        changes = []
        if case_review:
            changes.append(change("case", case_before, case_call_words(case)))
        for f, _, _ in decided_fields:
            changes.append(change("field", words_before[f.id], field_call_words(f), f, field_number(case, f)))
        if unverified:
            changes.append(unverified)
        add_amendment(case, actor, reason, changes_words(changes) or what, before, after, changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what=changes_words(changes) or what)
    case.updated_at = now
    db.commit()
    return case


def review_cells(db: Session, case: Case, field_id: int, changes: list[dict], actor: str,
                 amendment_reason: str | None = None) -> Field:
    """Reclassify cells of one field: [{"id", "label"}] where label is one of cells.REVIEW_LABELS (a class or
    "excluded"), or None to take the reviewer's class back (the AI's suggestion counts again)."""
    f = next((x for x in case.fields if x.id == field_id), None)
    if f is None:
        raise NotFound(f"Case {case.id} has no field {field_id}.", "Reload the case page.")
    if not changes:
        raise Invalid("No cells were given.", "Send a list of {id, label} for the cells to reclassify.")
    review_case_cells(db, case, [{**ch, "field_id": field_id} for ch in changes], actor, amendment_reason)
    return f


def review_case_cells(db: Session, case: Case, changes: list[dict], actor: str,
                      amendment_reason: str | None = None) -> Case:
    """Reclassify cells of any fields of the case in one transaction (the gallery's batch):
    [{"field_id", "id", "label"}], label one of cells.REVIEW_LABELS or None (back to the AI's suggestion).
    A real change takes the differential's verification back (audited); the same classes again change nothing."""
    if not changes:
        raise Invalid("No cells were given.", "Send a list of {field_id, id, label} for the cells to reclassify.")
    by_field = {f.id: f for f in case.fields}
    cells_of: dict[int, dict[int, dict]] = {}
    for ch in changes:
        f = by_field.get(ch["field_id"])
        if f is None:
            raise NotFound(f"Case {case.id} has no field {ch['field_id']}.", "Reload the case page.")
        if f.id not in cells_of:
            cells_of[f.id] = {c["id"]: dict(c) for c in (f.cells or [])}
        if ch["id"] not in cells_of[f.id]:
            raise NotFound(f"Field {field_number(case, f)} has no cell {ch['id']}.",
                           "Reload the case page to see its cells.")
        if ch.get("label") is not None and ch["label"] not in cell_logic.REVIEW_LABELS:
            raise Invalid(f"Unknown cell class {ch['label']!r}.",
                          f"Use one of: {', '.join(cell_logic.REVIEW_LABELS)}, or null to undo.")
    last = {(ch["field_id"], ch["id"]): ch.get("label") for ch in changes}  # the last word on a cell counts
    real = [(fid, cid, label) for (fid, cid), label in last.items() if cells_of[fid][cid].get("label") != label]
    if not real:
        return case  # the same classes again (a double submit): nothing to change
    fields_touched = sorted({fid for fid, _, _ in real}, key=lambda i: field_number(case, by_field[i]))
    where = ", ".join(f"field {field_number(case, by_field[i])}" for i in fields_touched)
    reason = require_unlocked(case, amendment_reason, f"reclassifying {len(real)} cell(s) of {where}")
    now = iso(utcnow())
    summary_before = dict(case.cell_summary or {})
    before_cells, cell_changes = [], []
    for fid, cid, label in real:
        c = cells_of[fid][cid]
        before_cells.append({"field_id": fid, "id": cid, "label": c.get("label"), "reviewed_by": c.get("reviewed_by")})
        was = cell_class_words(c)
        c["label"] = label
        c["reviewed_by"], c["reviewed_at"] = (actor, now) if label is not None else (None, None)
        cell_changes.append(change("cell", was, cell_class_words(c), by_field[fid], field_number(case, by_field[fid]), cid))
    for fid in fields_touched:
        f = by_field[fid]
        order = [c["id"] for c in (f.cells or [])]
        f.cells = [cells_of[fid][i] for i in order]  # a new list: the JSON column sees the change
    refresh_cells(case)
    for fid in fields_touched:
        audit(db, actor, "cells.review", f"case:{case.id}/field:{fid}",
              cells=[{"id": b["id"], "label": label, "previous": b["label"]}
                     for (f_, _, label), b in zip(real, before_cells, strict=True) if f_ == fid])
    unverified = unverify(db, case, actor, "cells reclassified")
    if reason:
        one = {"field_id": fields_touched[0]} if len(fields_touched) == 1 else {}
        before = {**one, "cells": before_cells, "differential": summary_before.get("differential"),
                  "blast_percent": summary_before.get("blast_percent")}
        after = {**one, "cells": [{"field_id": fid, "id": cid, "label": label, "reviewed_by": actor if label else None}
                                  for fid, cid, label in real],
                 "differential": case.cell_summary.get("differential"),
                 "blast_percent": case.cell_summary.get("blast_percent")}
        if unverified:
            cell_changes.append(unverified)
        add_amendment(case, actor, reason, changes_words(cell_changes), before, after, cell_changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what=changes_words(cell_changes))
    case.updated_at = utcnow()
    db.commit()
    return case


def verify_differential(db: Session, case: Case, actor: str, note: str = "",
                        amendment_reason: str | None = None) -> Case:
    """The reviewer verifies the differential: every counted leukocyte's class was checked (the AI's
    pre-classification with the reviewer's corrections is now the reviewer's count). Records who and when;
    any later change of a cell's class takes it back. Needs an amendment reason on a signed-off case."""
    note = " ".join((note or "").split())[:2000]
    if case.differential_verified and case.differential_verified_by == actor and (case.differential_note or "") == note:
        return case  # verified already, by the same reviewer (a double click)
    cs = cell_logic.cell_summary(counted_cells(case.fields))
    if cs["n_cells"] == 0:
        raise Invalid("This case has no counted leukocyte, so there is no differential to verify.",
                      "Add fields with leukocytes, or sign off without a differential (it stays 'not verified').")
    unclassified = cs["differential"].get(cell_logic.UNCLASSIFIED, 0) + cs["differential"].get(UNIDENTIFIED, 0)
    if unclassified:
        raise Invalid(f"{unclassified} cell{'s' if unclassified != 1 else ''} of the counted fields "
                      f"{'have' if unclassified != 1 else 'has'} no class yet (the AI left "
                      f"{'them' if unclassified != 1 else 'it'} unidentified).",
                      "Give each a class or exclude it in the cell gallery, then verify the differential.")
    reason = require_unlocked(case, amendment_reason, "verifying the differential")
    before_words = verification_words(case)
    before = {"differential_verified": case.differential_verified, "by": case.differential_verified_by,
              "at": iso(case.differential_verified_at)}
    now = utcnow()
    case.differential_verified, case.differential_verified_by, case.differential_verified_at = True, actor, now
    case.differential_note = note
    refresh_cells(case)
    audit(db, actor, "differential.verify", f"case:{case.id}", note=note, n_cells_counted=cs["n_counted"],
          differential_target=case.differential_target, differential=cs["differential"], blast_percent=cs["blast_percent"])
    if reason:
        changes = [change("differential", before_words, verification_words(case))]
        add_amendment(case, actor, reason, changes_words(changes), before,
                      {"differential_verified": True, "by": actor, "at": iso(now)}, changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what=changes_words(changes))
    case.updated_at = now
    db.commit()
    return case


def confirm_unflagged(db: Session, case: Case, actor: str) -> int:
    """Confirm the AI's call of every field that is unflagged and not yet reviewed; returns how many."""
    todo = [f for f in case.fields if f.flag == "ok" and f.label and not f.review_decision]
    if not todo:
        return 0
    review(db, case, actor, None, [{"field_id": f.id, "decision": "confirm", "label": None, "note": ""}
                                   for f in todo], classes=())  # confirmations name no class
    return len(todo)


def reviewed_results(case: Case) -> list[FieldResult]:
    """The fields as the reviewer called them: a reviewed field counts with the reviewer's class (certain,
    unflagged), an unreviewed one with the AI's output; unassessable fields (declared so, or with no class call
    and not overridden) are left out."""
    out = []
    for f in case.fields:
        if not is_assessable(f):
            continue
        r = field_result(f)
        if f.review_label:  # a class of the model: review() accepts no other
            r.label, r.flag, r.flag_reason, r.confidence = f.review_label, "ok", "", 1.0
            r.probabilities = {f.review_label: 1.0}  # every other class 0
            r.malignant_probability = malignant_probability(r.probabilities)
        out.append(r)
    return out


def reviewed_summary(analysis, case: Case) -> CaseSummary:
    """The case rule over the fields with the reviewer's field calls taken into account."""
    return summarize(analysis, reviewed_results(case))


BLAST_ALERT_PERCENT = 20.0  # blasts >= 20 % of leukocytes: acute leukaemia by the WHO's criterion


def sign_off_warnings(case: Case) -> list[str]:
    """What a clinician should know before signing off: unreviewed fields, and which of them are flagged; a
    differential that is not verified; fewer leukocytes counted than the case's target."""
    out = []
    todo = [i for i, f in enumerate(case.fields, start=1) if not f.review_decision]
    if todo:
        out.append(f"{len(todo)} of {len(case.fields)} field(s) not reviewed yet (field "
                   + ", ".join(map(str, todo[:20])) + ("…" if len(todo) > 20 else "") + ").")
    for i, f in enumerate(case.fields, start=1):
        if f.flag != "ok" and not f.review_decision:  # a flagged field the reviewer has called is dealt with
            w = words.flag_words(f.flag, f.flag_reason)
            out.append(f"Field {i} is flagged and not reviewed ({w['title']}): {w['problem']} {w['action']}")
    if case.fields:
        cs = cell_logic.cell_summary(counted_cells(case.fields))
        if not case.differential_verified:
            out.append("The differential is not verified: its counts are the AI pre-classification"
                       + (f" with {cs['n_cells_reviewed']} reviewer correction(s)" if cs["n_cells_reviewed"] else "")
                       + ". Check the cells in the gallery and verify the differential.")
        blasts = cs["blast_percent"]
        calls = [c for c in (case.ai_label, case.review_label) if c]
        if blasts is not None and blasts >= BLAST_ALERT_PERCENT and any(c.lower() == "benign" for c in calls):
            out.append(f"The differential counts {blasts:.1f} % blasts ({BLAST_ALERT_PERCENT:.0f} % or more: the "
                       "threshold for acute leukaemia) but the call is Benign. Check the blasts in the gallery and "
                       "the fields before signing off.")
        target = case.differential_target or 100
        if cs["n_counted"] < target:
            out.append(f"Fewer than {target} leukocytes counted ({cs['n_counted']} of {target}): add fields, or say "
                       "in the note that the count is short.")
    return out


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
                              func.lower(Case.created_by).like(like), func.lower(Case.accession).like(like),
                              func.lower(Case.patient_id).like(like)))
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


def field_dict(f: Field, url_prefix: str = "/files/", number: int | None = None) -> dict:
    """A field as the API answers it; `number` is its 1-based position in the case (looked up when not given)."""
    if number is None:
        number = field_number(f.case, f) if f.case is not None else 0
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
        "malignant_probability": f.malignant_probability,
        "cell_count": f.cell_count,
        "flag": f.flag,
        "flag_reason": f.flag_reason,
        "flag_words": words.flag_words(f.flag, f.flag_reason),
        "size_note": f.size_note,
        "image_url": url_prefix + f.image_file,
        "overlay_url": url_prefix + f.overlay_file if f.overlay_file else None,
        "heatmap_url": url_prefix + f.heatmap_file if f.heatmap_file else None,
        "heatmap_on_demand_url": f"/cases/{f.case_id}/fields/{f.id}/heatmap",
        "uploaded_by": f.uploaded_by,
        "uploaded_at": iso(f.uploaded_at),
        "review": {
            "decision": f.review_decision, "label": f.review_label, "note": f.review_note,
            "reviewed_by": f.reviewed_by, "reviewed_at": iso(f.reviewed_at),
        },
        "assessable": is_assessable(f),
        "decision_suggested": UNASSESSABLE if f.label is None else "confirm",
        "cells": [cell_dict(c) for c in (f.cells or [])],
    }


def unassessable_reason(f: Field) -> str:
    """Why a field is left out: the reviewer's note, else what the analysis said."""
    if f.review_decision == UNASSESSABLE:
        return f.review_note or f"Declared unassessable by {f.reviewed_by}."
    w = words.flag_words(f.flag, f.flag_reason)
    return f"No class call from the AI ({w['title']})." if f.flag != "ok" else "No class call from the AI."


def unassessable_fields(case: Case) -> list[dict]:
    return [{"field_id": f.id, "number": i, "name": f.display_name, "reason": unassessable_reason(f)}
            for i, f in enumerate(case.fields, start=1) if not is_assessable(f)]


def confidence_threshold(analysis) -> float:
    """The confidence at or above which the case call is a confident one: the analyser's `low_confidence`
    (the classifier's `thresholds.low_confidence` in its model config, which the case rule,
    leukodx.inference.summary.summarize_case, also uses: "case confidence below it" makes a case need review);
    the model config's default while no analyser is loaded."""
    from leukodx.models.model_config import DEFAULT_LOW_CONFIDENCE

    value = getattr(getattr(analysis, "analyzer", analysis), "low_confidence", None)
    return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_LOW_CONFIDENCE


def cell_dict(c: dict) -> dict:
    return {
        "id": c["id"], "area_px": c.get("area_px", 0), "centroid": c.get("centroid") or [0.0, 0.0],
        "bbox": c.get("bbox") or [0, 0, 0, 0], "area_um2": c.get("area_um2"),
        "touches_border": bool(c.get("touches_border")),
        "label": c.get("label"), "ai_label": c.get("ai_label"), "ai_confidence": c.get("ai_confidence"),
        "final_label": cell_logic.final_class(c),
        "reviewed_by": c.get("reviewed_by"), "reviewed_at": c.get("reviewed_at"),
    }


EMPTY_CELLS = cell_logic.cell_summary([])


def _counts(f: Field) -> bool:
    return is_assessable(f) and (f.flag == "ok" or f.review_decision in CASE_DECISIONS)


def counted_cells(fields) -> list[list[dict]]:
    """The cells that enter the case's differential and blast %: those of assessable fields only (not declared
    unassessable; with a class call, or overridden with one), unflagged or decided by a reviewer (the gallery
    still shows every cell)."""
    return [f.cells or [] for f in fields if _counts(f)]


def case_dict(case: Case, analysis=None, *, threshold: float | None = None) -> dict:
    """The case as the API answers it; with `analysis` (the app's AnalysisService: the case rule for the reviewed
    call) also its fields, review progress and warnings. `threshold`: the confident-call threshold when no
    `analysis` is given (`confidence_threshold`)."""
    with_fields = analysis is not None
    if threshold is None:
        threshold = confidence_threshold(analysis)
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
            "confident": bool(case.ai_label and case.ai_confidence is not None and case.ai_confidence >= threshold),
            "confidence_threshold": threshold,
        },
        "review": {
            "decision": case.review_decision, "label": case.review_label, "note": case.review_note,
            "reviewed_by": case.reviewed_by, "reviewed_at": iso(case.reviewed_at),
        },
        "specimen": case.specimen or "",
        "stain": case.stain or "",
        "locked": is_signed_off(case),
        "amended": bool(case.amendments),
        "amendments": [{"changes": [], **a} for a in (case.amendments or [])],
        "accession": case.accession or "",
        "patient_id": case.patient_id or "",
    }
    cs = cell_logic.cell_summary(counted_cells(case.fields)) if with_fields else (
        case.cell_summary or EMPTY_CELLS)
    for k in ("differential", "blast_percent", "ai_differential", "ai_blast_percent", "n_cells",
              "n_cells_reviewed"):
        d[k] = cs.get(k, EMPTY_CELLS[k])
    target = case.differential_target or 100
    n_counted = int(cs.get("n_counted", 0))
    d["n_cells_counted"] = n_counted
    d["n_cells_target_reached"] = n_counted >= target
    d["differential_target"] = target
    d["differential_verified"] = bool(case.differential_verified)
    d["differential_verified_by"] = case.differential_verified_by if case.differential_verified else None
    d["differential_verified_at"] = iso(case.differential_verified_at) if case.differential_verified else None
    d["differential_note"] = case.differential_note or ""
    d["differential_source"] = "verified" if case.differential_verified else "ai"
    if with_fields:
        d["unassessable_fields"] = unassessable_fields(case)
        d["fields"] = [field_dict(f, number=i) for i, f in enumerate(case.fields, start=1)]
        d["n_fields_reviewed"] = sum(1 for f in case.fields if f.review_decision)
        d["reviewed_fields_label"] = reviewed_summary(analysis, case).label if d["n_fields_reviewed"] else None
        d["warnings"] = sign_off_warnings(case)
        d["cells_outlined"] = cells_outlined(case)
    return d


def cells_outlined(case: Case) -> dict[str, int]:
    """The leukocytes outlined in the case's fields: `total`, `in_differential` (of the fields the differential
    counts: counted_cells), and those left out: of flagged fields not yet reviewed, and of unassessable fields."""
    n = {"total": 0, "in_differential": 0, "flagged_not_reviewed": 0, "unassessable": 0,
         "flagged_not_reviewed_fields": 0, "unassessable_fields": 0}
    for f in case.fields:
        k = len(f.cells or [])
        n["total"] += k
        key = "in_differential" if _counts(f) else "unassessable" if not is_assessable(f) else "flagged_not_reviewed"
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
            _csv_safe(c.review_note), _csv_safe(c.accession or ""), _csv_safe(c.patient_id or ""),
            int(bool(c.differential_verified)), _csv_safe(c.differential_verified_by or ""),
        ])
    return buf.getvalue()


FIELD_CSV_COLUMNS = [
    "case_id", "reference", "field_id", "field_number", "name", "sha256", "ai_label", "ai_confidence",
    "ai_malignant_probability", "cell_count", "flag", "flag_text", "review_decision", "review_label", "reviewed_by",
    "reviewed_at", "review_note", "n_cells", "n_cells_reviewed", "blasts", "blast_percent", "ai_blast_percent",
    # appended (issue 22)
    "accession", "patient_id", "differential_verified", "differential_verified_by",
]


def fields_csv(cases: list[Case]) -> str:
    """One row per field of the cases (beside the case CSV, whose columns stay as they were)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELD_CSV_COLUMNS)
    for c in cases:
        for i, f in enumerate(c.fields, start=1):
            cs = cell_logic.cell_summary([f.cells or []])
            w.writerow([
                c.id, _csv_safe(c.reference), f.id, i, _csv_safe(f.display_name), f.sha256, f.label or "",
                f"{f.confidence:.4f}" if f.label else "", f"{f.malignant_probability:.4f}" if f.label else "",
                f.cell_count, f.flag, _csv_safe(words.flag_text(f.flag, f.flag_reason)), f.review_decision or "",
                f.review_label or "", _csv_safe(f.reviewed_by or ""), iso(f.reviewed_at) or "",
                _csv_safe(f.review_note), cs["n_cells"], cs["n_cells_reviewed"], cs["differential"]["blast"],
                "" if cs["blast_percent"] is None else cs["blast_percent"],
                "" if cs["ai_blast_percent"] is None else cs["ai_blast_percent"],
                _csv_safe(c.accession or ""), _csv_safe(c.patient_id or ""), int(bool(c.differential_verified)),
                _csv_safe(c.differential_verified_by or ""),
            ])
    return buf.getvalue()
