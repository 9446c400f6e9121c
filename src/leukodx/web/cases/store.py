"""The case store: create, read, list and delete cases, add analysed fields, and the reviewer's changes.

Every function that changes a case does it in ONE transaction, with its audit entry inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from leukodx.inference.cell_classes import UNIDENTIFIED
from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.web import cells as cell_logic
from leukodx.web.cases import rules
from leukodx.web.db import Case, Field, FormSubmission, audit, utcnow


def same_reference(db: Session, reference: str, but: int | None = None) -> list[Case]:
    """Other cases with this smear reference (case and spacing ignored)."""
    return _same(db, Case.reference, reference, but)


def same_accession(db: Session, accession: str, but: int | None = None) -> list[Case]:
    """Other cases with this accession number (case and spacing ignored); none for an empty one."""
    return _same(db, Case.accession, accession, but) if (accession or "").strip() else []


def _same(db: Session, column, value: str, but: int | None) -> list[Case]:
    """Cases whose `column` equals `value` with case and spacing ignored, but case `but`."""
    stmt = select(Case).where(func.lower(column) == " ".join((value or "").split()).lower())
    if but is not None:
        stmt = stmt.where(Case.id != but)
    return list(db.scalars(stmt.order_by(Case.id)))


def create_case(db: Session, reference: str, note: str, actor: str, specimen: str = "", stain: str = "",
                form_token: str = "", *, accession: str = "", patient_id: str = "",
                differential_target: int = 100) -> Case:
    """A new case. With `form_token` (a one-time token of the page's form) a second submission of the same
    form makes no second case: FormSubmission's primary key refuses it (see `already_submitted`). A duplicate
    accession is allowed (the API warns: `duplicate_accession_warning`)."""
    ref = rules.clean_reference(reference)
    acc = rules.clean_identifier(accession, "accession number", "A24-001234")
    pid = rules.clean_identifier(patient_id, "patient identifier", "MRN 00123456")
    case = Case(reference=ref, note=(note or "").strip()[:2000], created_by=actor,
                specimen=" ".join((specimen or "").split())[:200] or "Peripheral blood",
                stain=" ".join((stain or "").split())[:100], accession=acc, patient_id=pid,
                differential_target=max(1, int(differential_target)), differential_verified=False)
    if form_token:
        submission = FormSubmission(token=form_token[:64], actor=actor)
        db.add(submission)
        db.flush()  # the token first: a concurrent double submit waits here, then fails on the primary key
    db.add(case)
    db.flush()
    if form_token:
        submission.result_url = f"/cases/{case.id}"
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
        raise rules.NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
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
        raise rules.NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return case


def field_hashes(db: Session, case_id: int) -> tuple[Case, set[str]]:
    """The case (without its fields) and the SHA-256 of its fields' images: what an upload checks first."""
    case = db.get(Case, case_id)
    if case is None:
        raise rules.NotFound(f"There is no case {case_id}.", "Open the case list to find it.")
    return case, set(db.scalars(select(Field.sha256).where(Field.case_id == case_id)))


def field_columns(r: FieldResult) -> dict:
    """A field's columns from its analysis: the AI's call, its flag and counts (rules.field_result reads them)."""
    return {"label": r.label, "probabilities": {k: float(v) for k, v in r.probabilities.items()},
            "confidence": float(r.confidence), "malignant_probability": float(r.malignant_probability),
            "cell_count": int(r.cell_count), "flag": r.flag, "size_note": r.size_note, "cell_model": r.cell_model,
            "flag_reason": r.flag_reason or getattr(r, "no_call_reason", "")}  # "ok" with a reason: no leukocyte


def apply_summary(case: Case, summary: CaseSummary) -> None:
    case.n_fields = len(case.fields)
    case.ai_label = summary.label
    case.ai_confidence = float(summary.confidence) if summary.label else None
    case.ai_malignant_probability = float(summary.malignant_probability) if summary.label else None
    case.total_cell_count = int(summary.total_cell_count)
    case.flagged = bool(summary.needs_review) or any(f.flag != "ok" for f in case.fields)
    case.summary = asdict(summary)


def refresh_cells(case: Case) -> None:
    case.cell_summary = cell_logic.cell_summary(rules.counted_cells(case.fields))


def duplicate_skip(case: Case, sha256: str, name: str) -> dict | None:
    """The 'skipped' answer for an image already in the case (same content), or None."""
    for i, f in enumerate(case.fields, start=1):
        if f.sha256 == sha256:
            return {"file": name, "field_id": f.id, "reason":
                    f"The same image (identical content) is already field {i} of this case"
                    f"{' (' + f.display_name + ')' if f.display_name else ''}; it was not added again, so its "
                    "cells are not counted twice."}
    return None


def unverify(db: Session, case: Case, actor: str, why: str) -> list[dict]:
    """A change of the counted cells takes the differential's verification back (audited); returns the change
    ([] when it was not verified)."""
    if not case.differential_verified:
        return []
    before = rules.verification_words(case)
    audit(db, actor, "differential.unverify", f"case:{case.id}", why=why, was_verified_by=case.differential_verified_by,
          was_verified_at=rules.iso(case.differential_verified_at))
    case.differential_verified = False
    case.differential_verified_by, case.differential_verified_at = None, None
    return [rules.change("differential", before, f"not verified ({why})")]


def add_fields(db: Session, case: Case, items: list[dict], analysis, actor: str,
               amendment_reason: str | None = None) -> tuple[list[Field], list[dict]]:
    """Add analysed fields (files already stored) and update the case summary, in one transaction. An image
    already in the case (same sha256) is skipped: returns (new fields, [{"file", "field_id", "reason"}])."""
    n = len(items)
    reason = rules.require_unlocked(case, amendment_reason, f"adding {n} field{'s' if n != 1 else ''}")
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
        summary = rules.summarize(analysis, case)
        assert summary is not None  # fields are added after their analysis: the models are loaded
        apply_summary(case, summary)
        refresh_cells(case)
        case.updated_at = utcnow()
    for f in new:
        audit(db, actor, "field.add", f"case:{case.id}/field:{f.id}", sha256=f.sha256, label=f.label,
              confidence=round(f.confidence, 4), cell_count=f.cell_count, flag=f.flag)
    for sk in skipped:
        audit(db, actor, "field.skip_duplicate", f"case:{case.id}/field:{sk['field_id']}", file=sk["file"])
    unverified = unverify(db, case, actor, "fields added") if any(f.cells for f in new) else []
    if reason and new:
        n_before = before["n_fields"]
        added = ", ".join(f"field {rules.field_number(case, f)}" + (f" ({f.display_name})" if f.display_name else "")
                          for f in new)
        changes = [rules.change("fields", f"{n_before} field{'s' if n_before != 1 else ''}",
                                f"{len(case.fields)} fields (added {added})"), *unverified]
        rules.add_amendment(case, actor, reason, rules.changes_words(changes), before,
                            {"n_fields": len(case.fields), "added": [f.display_name for f in new],
                             "differential": case.cell_summary.get("differential")}, changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what="fields added")
    db.commit()
    return new, skipped


def _same_decision(obj, decision: str, label: str | None, note: str, actor: str) -> bool:
    return (obj.review_decision == decision and obj.review_label == label and obj.reviewed_by == actor
            and (obj.review_note or "") == (note or "").strip()[:2000])


def review(db: Session, case: Case, actor: str, case_review: dict | None, field_reviews: list[dict],
           amendment_reason: str | None = None, *, classes: Sequence[str]) -> Case:
    """Apply the reviewer's decisions (case and/or fields) in one transaction; an override names one of `classes`
    (AnalysisService.classes); a field may also be declared `unassessable` (its note says why). The AI's output
    is untouched. A signed-off case changes only with an amendment reason (else Locked), but the very decisions
    it holds, sent again by the same reviewer (a double submit), change nothing and need none. A change of the
    fields counted takes the differential's verification back."""
    if not case_review and not field_reviews:
        raise rules.Invalid("The review is empty.", "Give a case decision, field decisions, or both.")
    now = utcnow()
    by_id = {f.id: f for f in case.fields}
    decided_fields = []
    for fr in field_reviews:
        f = by_id.get(fr["field_id"])
        if f is None:
            raise rules.NotFound(f"Case {case.id} has no field {fr['field_id']}.", "Reload the case page.")
        decided_fields.append((f, fr, rules.decide(fr["decision"], fr.get("label"), f.label,
                                                   f"field {rules.field_number(case, f)}", classes, rules.DECISIONS)))
    case_label = None
    if case_review:
        case_label = rules.decide(case_review["decision"], case_review.get("label"), case.ai_label, "the case", classes)
    reason = what = ""
    if rules.is_signed_off(case):
        unchanged = all(_same_decision(f, fr["decision"], lab, fr.get("note") or "", actor)
                        for f, fr, lab in decided_fields)
        if case_review:
            assert case_label is not None
            unchanged = unchanged and _same_decision(case, case_review["decision"], case_label,
                                                     case_review.get("note") or "", actor)
        if unchanged and not rules.clean_amendment_reason(amendment_reason):
            return case  # the same decisions again: nothing to change, nothing to amend
        if unchanged:
            raise rules.Invalid("Nothing to amend: these are the calls and notes already signed off.",
                                "Choose another class or change the note, or leave the signed-off case as it is.")
        n = len(decided_fields)
        what = ("the sign-off" if case_review else "") + (" and " if case_review and n else "") + (
            f"the call of {n} field{'s' if n != 1 else ''}" if n else "")
        reason = rules.require_unlocked(case, amendment_reason, f"changing {what}")
    before = {"case": rules.review_of(case), "fields": {str(f.id): rules.review_of(f) for f, _, _ in decided_fields}}
    words_before = {f.id: rules.field_call_words(f) for f, _, _ in decided_fields}
    case_before = rules.case_call_words(case)
    counted_before = [f.id for f in case.fields if rules.counts(f)]
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
    unverified: list[dict] = []
    if [f.id for f in case.fields if rules.counts(f)] != counted_before:
        refresh_cells(case)
        if any(f.cells for f, _, _ in decided_fields):
            unverified = unverify(db, case, actor, "fields counted changed")
    if reason:
        after = {"case": rules.review_of(case), "fields": {str(f.id): rules.review_of(f) for f, _, _ in decided_fields}}
        changes = [rules.change("case", case_before, rules.case_call_words(case))] if case_review else []
        changes += [rules.change("field", words_before[f.id], rules.field_call_words(f), f, rules.field_number(case, f))
                    for f, _, _ in decided_fields]
        changes += unverified
        what = rules.changes_words(changes) or what
        rules.add_amendment(case, actor, reason, what, before, after, changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what=what)
    case.updated_at = now
    db.commit()
    return case


def review_case_cells(db: Session, case: Case, changes: list[dict], actor: str,
                      amendment_reason: str | None = None) -> Case:
    """Reclassify cells of any fields of the case in one transaction (the gallery's batch):
    [{"field_id", "id", "label"}], label one of cells.REVIEW_LABELS or None (back to the AI's suggestion).
    A real change takes the differential's verification back (audited); the same classes again change nothing."""
    if not changes:
        raise rules.Invalid("No cells were given.", "Send a list of {field_id, id, label} for the cells to reclassify.")
    by_field = {f.id: f for f in case.fields}
    cells_of = {f.id: {c["id"]: dict(c) for c in (f.cells or [])} for f in case.fields}  # copies, changed below
    for ch in changes:
        f = by_field.get(ch["field_id"])
        if f is None:
            raise rules.NotFound(f"Case {case.id} has no field {ch['field_id']}.", "Reload the case page.")
        if ch["id"] not in cells_of[f.id]:
            raise rules.NotFound(f"Field {rules.field_number(case, f)} has no cell {ch['id']}.",
                                 "Reload the case page to see its cells.")
        if ch.get("label") is not None and ch["label"] not in cell_logic.REVIEW_LABELS:
            raise rules.Invalid(f"Unknown cell class {ch['label']!r}.",
                                f"Use one of: {', '.join(cell_logic.REVIEW_LABELS)}, or null to undo.")
    last = {(ch["field_id"], ch["id"]): ch.get("label") for ch in changes}  # the last word on a cell counts
    real = [(fid, cid, label) for (fid, cid), label in last.items() if cells_of[fid][cid].get("label") != label]
    if not real:
        return case  # the same classes again (a double submit): nothing to change
    fields_touched = sorted({fid for fid, _, _ in real}, key=lambda i: rules.field_number(case, by_field[i]))
    where = ", ".join(f"field {rules.field_number(case, by_field[i])}" for i in fields_touched)
    reason = rules.require_unlocked(case, amendment_reason, f"reclassifying {len(real)} cell(s) of {where}")
    now = rules.iso(utcnow())
    summary_before = dict(case.cell_summary or {})
    before_cells, cell_changes = [], []
    for fid, cid, label in real:
        c = cells_of[fid][cid]
        before_cells.append({"field_id": fid, "id": cid, "label": c.get("label"), "reviewed_by": c.get("reviewed_by")})
        was = rules.cell_class_words(c)
        c["label"] = label
        c["reviewed_by"], c["reviewed_at"] = (actor, now) if label is not None else (None, None)
        cell_changes.append(rules.change("cell", was, rules.cell_class_words(c), by_field[fid], rules.field_number(case, by_field[fid]), cid))
    for fid in fields_touched:
        by_field[fid].cells = list(cells_of[fid].values())  # a new list: the JSON column sees the change
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
        cell_changes += unverified
        rules.add_amendment(case, actor, reason, rules.changes_words(cell_changes), before, after, cell_changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what=rules.changes_words(cell_changes))
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
    cs = cell_logic.cell_summary(rules.counted_cells(case.fields))
    if cs["n_cells"] == 0:
        raise rules.Invalid("This case has no counted leukocyte, so there is no differential to verify.",
                            "Add fields with leukocytes, or sign off without a differential (it stays 'not verified').")
    unclassified = cs["differential"].get(cell_logic.UNCLASSIFIED, 0) + cs["differential"].get(UNIDENTIFIED, 0)
    if unclassified:
        raise rules.Invalid(f"{unclassified} cell{'s' if unclassified != 1 else ''} of the counted fields "
                            f"{'have' if unclassified != 1 else 'has'} no class yet (the AI left "
                            f"{'them' if unclassified != 1 else 'it'} unidentified).",
                            "Give each a class or exclude it in the cell gallery, then verify the differential.")
    reason = rules.require_unlocked(case, amendment_reason, "verifying the differential")
    before_words = rules.verification_words(case)
    before = {"differential_verified": case.differential_verified, "by": case.differential_verified_by,
              "at": rules.iso(case.differential_verified_at)}
    now = utcnow()
    case.differential_verified, case.differential_verified_by, case.differential_verified_at = True, actor, now
    case.differential_note = note
    refresh_cells(case)
    audit(db, actor, "differential.verify", f"case:{case.id}", note=note, n_cells_counted=cs["n_counted"],
          differential_target=case.differential_target, differential=cs["differential"], blast_percent=cs["blast_percent"])
    if reason:
        changes = [rules.change("differential", before_words, rules.verification_words(case))]
        after = {"differential_verified": True, "by": actor, "at": rules.iso(now)}
        last = (case.amendments or [{}])[-1]
        if rules.withdrew_verification(last, actor, reason, now):  # verified again in the amendment that withdrew it
            changes = [*last["changes"], *changes]
            case.amendments = [*case.amendments[:-1], {**last, "what": rules.changes_words(changes), "changes": changes,
                                                       "after": {**(last.get("after") or {}), "verified_again": after}}]
        else:
            rules.add_amendment(case, actor, reason, rules.changes_words(changes), before, after, changes)
        audit(db, actor, "case.amend", f"case:{case.id}", reason=reason, what=rules.changes_words(changes))
    case.updated_at = now
    db.commit()
    return case


def confirm_unflagged(db: Session, case: Case, actor: str, benign: Sequence[str],
                      confirm_malignant: Sequence[int] = ()) -> int:
    """Confirm the AI's call of every field that is unflagged and not yet reviewed; returns how many. A malignant
    call (not one of `benign`) only when its field number is in `confirm_malignant`, else Invalid names them."""
    todo = rules.bulk_confirmable(case, benign)
    if not todo:
        return 0
    rules.require_unlocked(case, None, "confirming the unflagged fields")
    unnamed = ", ".join(f"{i} ({f.label})" for i, f, bad in todo if bad and i not in set(confirm_malignant))
    if unnamed:
        raise rules.Invalid(f"Nothing was confirmed: a malignant AI call is confirmed in bulk only when named (not "
                            f"named: field {unnamed}).", "Check them, then give their numbers in confirm_malignant.")
    review(db, case, actor, None, [{"field_id": f.id, "decision": "confirm", "label": None, "note": ""}
                                   for _, f, _ in todo], classes=())  # confirmations name no class
    return len(todo)


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
        stmt = stmt.where(or_(*(func.lower(col).like(like) for col in (
            Case.reference, Case.note, Case.created_by, Case.accession, Case.patient_id))))
    if status == "unreviewed":
        stmt = stmt.where(Case.review_decision.is_(None))
    elif status == "reviewed":
        stmt = stmt.where(Case.review_decision.is_not(None))
    if flagged is not None:
        stmt = stmt.where(Case.flagged.is_(flagged))
    total = db.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = db.scalars(stmt.order_by(Case.created_at.desc(), Case.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total
