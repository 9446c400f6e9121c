"""The case rules: who may change a case and how an amendment is recorded, what a field counts for, input
cleaning, the case rule over the fields (as the reviewer called them) and the warnings before sign-off."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from leukodx.errors import LeukodxError
from leukodx.inference.summary import malignant_probability
from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.web import cells as cell_logic
from leukodx.web import words
from leukodx.web.db import Case, Field, utcnow

CASE_DECISIONS = ("confirm", "override")
# a field may also be declared unassessable (no smear, blank, out of focus...): see is_assessable
DECISIONS = (*CASE_DECISIONS, "unassessable")
UNASSESSABLE = "unassessable"
AMENDMENT_RULE = ("Any clinician may amend a signed-off case, their own or another clinician's, by giving a "
                  "reason; the amendment is recorded (who, when, reason, before and after) and shown on the case "
                  "page and the report.")


class NotFound(LeukodxError):
    status = 404


class Invalid(LeukodxError):
    status = 422


class Locked(LeukodxError):
    """The case is signed off and the change came without an amendment reason (answered 409). `message` is one
    sentence for a page; `api_message` names the request field an API client sends."""

    status = 409

    def __init__(self, problem: str, hint: str, api_hint: str):
        super().__init__(problem, hint)
        self.api_message = f"{problem.rstrip('.')}: {api_hint[:1].lower()}{api_hint[1:]}"

    @property
    def message(self) -> str:
        return f"{self.problem.rstrip('.')}: {self.hint[:1].lower()}{self.hint[1:]}"


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive datetimes; they were stored in UTC)."""
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def review_of(obj: Case | Field) -> dict:
    """A case's or a field's review as the API answers it (and an amendment records it)."""
    return {"decision": obj.review_decision, "label": obj.review_label, "note": obj.review_note,
            "reviewed_by": obj.reviewed_by, "reviewed_at": iso(obj.reviewed_at)}


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


def withdrew_verification(amendment: dict, actor: str, reason: str, now: datetime) -> bool:
    """Did this amendment take the differential's verification back, by `actor` for `reason`, within the hour?"""
    return (amendment.get("by") == actor and amendment.get("reason") == reason
            and (amendment.get("at") or "") >= str(iso(now - timedelta(hours=1)))
            and any(ch.get("target") == "differential" and str(ch.get("after")).startswith("not verified")
                    for ch in amendment.get("changes") or []))


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
    class call. An unassessable field is left out of the reviewed case call and of the differential."""
    if f.review_decision == UNASSESSABLE:
        return False
    if f.review_decision in CASE_DECISIONS:
        return True
    return f.label is not None


def counts(f: Field) -> bool:
    return is_assessable(f) and (f.flag == "ok" or f.review_decision in CASE_DECISIONS)


def counted_cells(fields) -> list[list[dict]]:
    """The cells that enter the case's differential and blast %: of assessable fields, unflagged or decided by a
    reviewer (the gallery still shows every cell)."""
    return [f.cells or [] for f in fields if counts(f)]


def field_call_words(f: Field) -> str:
    """How a field is called now, in words: "Pre (AI)", "Benign", "unassessable", "unassessable (no AI call)"."""
    if f.review_decision == UNASSESSABLE:
        return UNASSESSABLE
    if f.review_decision in CASE_DECISIONS and f.review_label:
        return f.review_label
    return f"{f.label} (AI)" if f.label else f"{UNASSESSABLE} (no AI call)"


def review_basis(decision: str | None, label: str | None, ai_label: str | None, ai_confident: bool) -> str | None:
    """Whose call a reviewer's call is (the API's `review.basis`, schemas.ReviewOut), against the AI's call as it
    stands; `ai_confident`: a case call at its threshold, an unflagged field."""
    if not decision or decision == UNASSESSABLE:
        return decision or None
    if not ai_label:
        return "reviewer_call_no_ai_call"
    if label != ai_label:
        return "override"
    return "confirmed_ai" if ai_confident else "reviewer_call_same_as_unconfident_ai"


def field_basis(f: Field) -> str | None:
    return review_basis(f.review_decision, f.review_label, f.label, f.flag == "ok")


def ai_confident(case: Case, threshold: float | None) -> bool:
    """Is the AI's case call at or above `threshold` (confidence_threshold), so pages offer a one-click confirm?"""
    return bool(case.ai_label and case.ai_confidence is not None and threshold is not None
                and case.ai_confidence >= threshold)


def case_basis(case: Case, threshold: float | None) -> str | None:
    return review_basis(case.review_decision, case.review_label, case.ai_label, ai_confident(case, threshold))


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


def _listed(others: list[Case], with_reference: bool = False) -> str:
    return ", ".join(f"case {c.id} ({f'{c.reference}, ' if with_reference else ''}created "
                     f"{(iso(c.created_at) or '?')[:10]} by {c.created_by})" for c in others[:5])


def duplicate_warning(others: list[Case]) -> str:
    if not others:
        return ""
    return (f"Another case has the same smear reference: {_listed(others)}. Check that this is a different smear; "
            "if it is the same smear, add its fields to the existing case instead.")


def duplicate_accession_warning(others: list[Case]) -> str:
    if not others:
        return ""
    return (f"Another case has the same accession number: {_listed(others, True)}. Check the accession number; if "
            "it is the same specimen, add its fields to the existing case instead.")


def decide(decision: str, label: str | None, ai_label: str | None, what: str, classes: Sequence[str],
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


def unassessable_reason(f: Field) -> str:
    """Why a field is left out: the reviewer's note, else what the analysis said."""
    if f.review_decision == UNASSESSABLE:
        return f.review_note or f"Declared unassessable by {f.reviewed_by}."
    w = words.flag_words(f.flag, f.flag_reason)
    return f"No class call from the AI ({w['title']})." if f.flag != "ok" else w["problem"] or "No class call from the AI."


def unassessable_fields(case: Case) -> list[dict]:
    """Each field left out, with its reason and whose it is (`reason_by`: "reviewer", or "ai" before review)."""
    return [{"field_id": f.id, "number": i, "name": f.display_name, "reason": unassessable_reason(f),
             "reason_by": "reviewer" if f.review_decision == UNASSESSABLE else "ai"}
            for i, f in enumerate(case.fields, start=1) if not is_assessable(f)]


def bulk_confirmable(case: Case, benign: Sequence[str]) -> list[tuple[int, Field, bool]]:
    """What "confirm all unflagged fields" confirms: (number, field, malignant: not one of the `benign` classes)
    of each field with an AI call, no flag and no review yet."""
    return [(i, f, f.label not in benign) for i, f in enumerate(case.fields, start=1)
            if f.flag == "ok" and f.label and not f.review_decision]


def field_result(f: Field) -> FieldResult:
    return FieldResult(
        path=f.display_name, label=f.label, probabilities=dict(f.probabilities or {}), confidence=f.confidence,
        malignant_probability=f.malignant_probability, cell_count=f.cell_count, flag=f.flag,
        flag_reason=f.flag_reason,
    )


def summarize(analysis, case: Case) -> CaseSummary | None:
    """The case rule over a case's fields as the AI called them: `analysis.summarize` (the app's
    AnalysisService, or an analyser: its case rule, as `predict` applies it); None while the models load."""
    return analysis.summarize([field_result(f) for f in case.fields])


def reviewed_results(case: Case, benign: Sequence[str]) -> list[FieldResult]:
    """The fields as the reviewer called them: a reviewed field counts with the reviewer's class (certain,
    unflagged), an unreviewed one with the AI's output; unassessable fields (declared so, or with no class call
    and not overridden) are left out. `benign`: the case rule's benign classes."""
    out = []
    for f in case.fields:
        if not is_assessable(f):
            continue
        r = field_result(f)
        if f.review_label:  # a class of the model: review() accepts no other
            r.label, r.flag, r.flag_reason, r.confidence = f.review_label, "ok", "", 1.0
            r.probabilities = {f.review_label: 1.0}  # every other class 0
            r.malignant_probability = malignant_probability(r.probabilities, benign)
        out.append(r)
    return out


def reviewed_summary(analysis, case: Case) -> CaseSummary | None:
    """The case rule over the fields with the reviewer's field calls taken into account (`analysis`: the app's
    AnalysisService); None while the models load."""
    return analysis.summarize(reviewed_results(case, analysis.benign))


def confidence_threshold(analysis) -> float | None:
    """The confidence at or above which the case call is a confident one: the analyser's `low_confidence` (the
    classifier config's, as the case rule uses it); None while the models load."""
    from leukodx.models.model_config import DEFAULT_LOW_CONFIDENCE

    analyzer = getattr(analysis, "analyzer", analysis)
    if analyzer is None:
        return None
    value = getattr(analyzer, "low_confidence", None)
    return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_LOW_CONFIDENCE


BLAST_ALERT_PERCENT = 20.0  # blasts >= 20 % of leukocytes: acute leukaemia by the WHO's criterion


def blasts_under_benign_call(blast_percent: float | None, call: str | None) -> str | None:
    """The words when the differential counts 20 % blasts or more but `call` is a benign class (None: no call,
    or not a benign one); else None. The sign-off box and the printed report say it."""
    if blast_percent is None or blast_percent < BLAST_ALERT_PERCENT or not call:
        return None
    return (f"The differential counts {blast_percent:.1f} % blasts ({BLAST_ALERT_PERCENT:.0f} % or more: the "
            f"threshold for acute leukaemia) but the call is {call}.")


def sign_off_warnings(case: Case, benign: Sequence[str]) -> list[str]:
    """What a clinician should know before signing off: unreviewed fields, and which of them are flagged; a
    differential that is not verified; many blasts under a benign call (`benign`: the case rule's benign
    classes); fewer leukocytes counted than the case's target."""
    out = []
    todo = [i for i, f in enumerate(case.fields, start=1) if not f.review_decision]
    if todo:
        out.append(f"{len(todo)} of {len(case.fields)} field(s) not reviewed yet (field "
                   + ", ".join(map(str, todo[:20])) + ("…" if len(todo) > 20 else "") + ").")
    for i, f in enumerate(case.fields, start=1):
        if f.flag != "ok" and not f.review_decision:  # a flagged field the reviewer has called is dealt with
            w = words.flag_words(f.flag, f.flag_reason)
            out.append(f"Field {i} is flagged and not reviewed ({w['title']}): review it first; its flag says why.")
    if case.fields:
        cs = cell_logic.cell_summary(counted_cells(case.fields))
        if not case.differential_verified:
            out.append("The differential is not verified: its counts are the AI pre-classification"
                       + (f" with {cs['n_cells_reviewed']} reviewer correction(s)" if cs["n_cells_reviewed"] else "")
                       + ". Check the cells in the gallery and verify the differential.")
        call = next((c for c in (case.ai_label, case.review_label) if c in benign), None)
        if discord := blasts_under_benign_call(cs["blast_percent"], call):
            out.append(f"{discord} Check the blasts in the gallery and the fields before signing off.")
        target = case.differential_target or 100
        if cs["n_counted"] < target:
            out.append(f"Fewer than {target} leukocytes counted ({cs['n_counted']} of {target}): add fields, or say "
                       "in the note that the count is short.")
    return out
