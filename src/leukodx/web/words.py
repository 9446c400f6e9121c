"""Words a clinician uses: flags, AI calls, case-summary reasons and review decisions, in plain sentences.

The analysis speaks in engineering terms (flag codes such as `out_of_distribution`, reasons with thresholds).
The API keeps those (`flag`, `flag_reason`); pages and the report show only what this module makes of them:
what is wrong, and what to do.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, tzinfo

from leukodx.inference.smear_check import ADVICE as SMEAR_ADVICE

# Words for the classes a model may have (the classes themselves are the analyser's, from its model config); a
# class without words here is shown by its own name.
CLASS_NAMES = {"Benign": "Benign (no blasts)", "Early": "Early pre-B ALL", "Pre": "Pre-B ALL", "Pro": "Pro-B ALL"}
# the call worded as a morphology finding, as a lab reports it (a subtype needs immunophenotyping to be a diagnosis)
CALL_WORDS = {
    "Benign": "No morphological features of ALL (no blasts: benign lymphoid cells such as hematogones, or normal "
              "leukocytes)",
    "Early": "Morphology consistent with early pre-B ALL; confirm by flow cytometry",
    "Pre": "Morphology consistent with pre-B ALL; confirm by flow cytometry",
    "Pro": "Morphology consistent with pro-B ALL; confirm by flow cytometry",
}
DECISION_SHORT = {"confirm": "confirmed", "override": "overridden"}
# whose call a reviewer's call is (rules.review_basis); short: the words before ";"
BASIS_WORDS = {"confirmed_ai": "confirmed the AI suggestion", "override": "overrode the AI suggestion",
               "reviewer_call_same_as_unconfident_ai": "reviewer's call; the AI's unconfident suggestion was the same",
               "reviewer_call_no_ai_call": "reviewer's call; the AI made no call", "unassessable": "unassessable"}

FLAG_TITLES = {
    "ok": "No flags",
    "low_confidence": "AI unsure",
    "out_of_distribution": "AI not reliable on this image",
    "unreadable": "Image could not be read",
}
_DEFAULT = {
    "low_confidence": ("The AI is unsure about this field, and it is often wrong on such fields.",
                       "Read the field yourself and give your own call."),
    "out_of_distribution": ("This image is unlike the smear fields the AI was trained on, so its call is not "
                            "reliable.",
                            "Read the field yourself; check that it is a stained peripheral blood smear "
                            "photographed with the 100x oil objective."),
    "unreadable": ("The file could not be read as an image.", "Upload the image again, or another field."),
}
# engineering talk: thresholds, ranges, comparison signs, code names
_TECHNICAL = re.compile(r"\d\.\d{3,}|outside \d|[<>]|_|\bred/green\b|feature distance|white balance|\bstd\b|"
                        r"\bz-?score\b|percentile|mahalanobis", re.I)


def percent(p: float | None, digits: int = 0) -> str:
    """A probability (0..1) as a percentage a clinician reads; the ONE way pages and the report show one.

    Rounding never claims certainty the AI does not have: a probability under 1 is never "100 %" (it reads
    "> 99 %"), one above 0 never "0 %" ("< 1 %"). None (or not a number) reads "–"."""
    try:
        v = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if v != v:  # NaN
        return "–"
    step = 10.0 ** -digits
    shown = round(v * 100, digits)
    if v < 1 and shown >= 100:
        return f"> {100 - step:.{digits}f} %"
    if v > 0 and shown <= 0:
        return f"< {step:.{digits}f} %"
    return f"{shown:.{digits}f} %"


def model_percent(p: float | None, digits: int = 0) -> str:
    """A model's probability (the AI's confidence, a class probability): as `percent`, but a stored 1 or 0 is
    a rounded model output (a cell's confidence is kept to 4 decimals), never certainty: 1 reads "> 99 %",
    0 reads "< 1 %". The pages' `pct` filter."""
    try:  # just inside (0, 1): `percent` then never reads it as certain (NaN stays NaN: "–")
        v = min(max(float(p), math.nextafter(0, 1)), math.nextafter(1, 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return percent(v, digits)


def blast_percent(v: float | None) -> str:
    """A blast percentage (0..100, one decimal) as the differential shows it: "12.3 %", "–" with no cell counted."""
    return "–" if v is None else f"{v:.1f} %"


def cell_model_words(versions) -> str:
    """The cell model version(s) that pre-classified fields' cells (CellClassifier.version, Field.cell_model)."""
    vs = list(versions)
    return "; ".join(sorted({v for v in vs if v}) + ([] if all(vs) else ["not recorded (analysed before)"]))


def zone(name: str | None) -> tzinfo:
    """The lab's time zone (an IANA name such as "Asia/Tehran"); the server's own zone when none is given."""
    if name:
        from zoneinfo import ZoneInfo

        try:
            return ZoneInfo(name)
        except (KeyError, ValueError):
            pass
    return datetime.now().astimezone().tzinfo or UTC


def zone_name(tz: tzinfo) -> str:
    return getattr(tz, "key", None) or datetime.now(tz).tzname() or "UTC"


def local_time(x: datetime | str | None, tz: tzinfo | None = None, seconds: bool = False) -> str:
    """A stored time (UTC; a datetime, or an ISO 8601 string as the amendments keep it) in the lab's zone,
    naming the zone: "2026-05-02 14:03 (Asia/Tehran)". None reads "–"."""
    if not x:
        return "–"
    if isinstance(x, str):
        try:
            x = datetime.fromisoformat(x)
        except ValueError:
            return str(x)
    tz = tz or zone(None)
    when = (x if x.tzinfo else x.replace(tzinfo=UTC)).astimezone(tz)
    return when.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "")) + f" ({zone_name(tz)})"


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def scale_words(source: str | None, um_per_px: float) -> str:
    """How a field's scale is known, in words: "Scale from the red cells measured (7.5 µm across): 0.118 µm per
    pixel.", "Scale given by the lab: …" or "Scale estimated from … (a red cell taken as 7.5 µm across): …"."""
    from leukodx.inference.scale import GIVEN, MEASURED, REFERENCE_RBC_UM

    how = source or MEASURED
    head = (f"Scale from the red cells measured ({REFERENCE_RBC_UM:g} µm across)" if how == MEASURED else
            "Scale given by the lab" if how == GIVEN else f"Scale {how} (a red cell taken as {REFERENCE_RBC_UM:g} µm "
            "across)")
    return f"{head}: {um_per_px:.3f} µm per pixel."


def flag_words(flag: str, reason: str = "") -> dict[str, str]:
    """{"title", "problem", "action"} for a field's flag: a short title, what is wrong and what to do."""
    if flag == "ok" or not flag:  # with a reason only when no leukocyte was found: no call, no flag
        return {"title": "No leukocyte found" if reason else FLAG_TITLES["ok"], "problem": " ".join(reason.split()),
                "action": ""}
    title = FLAG_TITLES.get(flag, "Check this field")
    problem, action = _DEFAULT.get(flag, ("The AI flagged this field.", "Read the field yourself."))
    reason = " ".join((reason or "").split())
    if flag == "low_confidence":
        m = re.search(r"confidence (\d*\.\d+|\d+)", reason)
        if m:
            v = float(m.group(1))
            pct = v * 100 if v <= 1 else v
            problem = (f"The AI is unsure about this field (confidence {percent(pct / 100)}), and it is often wrong "
                       "on such fields.")
        elif reason and not _TECHNICAL.search(reason):  # its cells do not support the call: say how
            problem = _sentence(reason.removesuffix(" Look at the field yourself."))
    elif flag == "out_of_distribution" and reason:
        advice = next((a for a in SMEAR_ADVICE.values() if a in reason), None)
        if "unlike anything the model was trained on" in reason:
            pass  # the feature-distance check: the defaults say it in words
        elif advice is not None:
            head = reason.replace(advice, "").strip()
            if head and not _TECHNICAL.search(head):
                problem = _sentence(head)
            action = advice
        elif not _TECHNICAL.search(reason):
            problem = _sentence(reason)
    elif flag == "unreadable" and reason and not _TECHNICAL.search(reason):
        problem = _sentence(reason[:1].upper() + reason[1:])
    return {"title": title, "problem": problem, "action": action}


def flag_text(flag: str, reason: str = "") -> str:
    w = flag_words(flag, reason)
    return "" if not w["problem"] else f"{w['title']}: {w['problem']} {w['action']}"


def reason_words(reason: str, signed: bool = False) -> str:
    """A case-summary reason (leukodx.inference.summary) in plain words; `signed`: worded for a signed-off case
    (what the AI found, no longer what to do before sign-off)."""
    r = reason.strip()
    if m := re.match(r"(\d+) of (\d+) fields flagged", r):
        n, total = int(m.group(1)), int(m.group(2))
        verb = ("was" if n == 1 else "were") if signed else ("is" if n == 1 else "are")
        head = f"{n} of {total} field{'s' if total != 1 else ''} {verb} flagged"
        return head + (" by the AI; the reviewer read them." if signed else
                       f": read {'it' if n == 1 else 'them'} yourself (see each field).")
    if m := re.match(r"case confidence ([0-9.]+)", r):
        verb = "was" if signed else "is"
        return f"The AI {verb} unsure about the case as a whole (confidence {percent(float(m.group(1)))})."
    if m := re.match(r"malignant probability ([0-9.]+) is undecided", r):
        p = percent(float(m.group(1)))
        return (f"The AI could not tell benign from leukemic (probability of leukemia {p}); the reviewer decided "
                "from the fields." if signed else
                f"The AI cannot tell benign from leukemic for this case (probability of leukemia {p}). Decide "
                "from the fields.")
    if m := re.match(r"fields disagree: (\d+) malignant, (\d+) benign", r):
        return (f"The fields disagreed: {m.group(1)} looked leukemic and {m.group(2)} benign to the AI." if signed
                else f"The fields disagree: {m.group(1)} look leukemic and {m.group(2)} benign. Review each field "
                "before signing off.")
    if r.startswith("no field could be analysed"):
        return "No field could be analysed. Add readable field images."
    if r.startswith("no fields given"):
        return "No fields yet. Add the field images of this smear."
    return _sentence(r.replace("_", " ")[:1].upper() + r.replace("_", " ")[1:])


def call_words(label: str | None) -> str:
    return CALL_WORDS.get(label, label) if label else "No call"


# --- amendments: each change in words (which field or cell, before -> after) --------------------------------

_TARGETS = {"case": "Case call", "sign_off": "Case call", "differential": "Differential"}


def _value_words(v, cell_words: dict[str, str] | None = None) -> str:
    """A before/after value of an amendment (a class, a cell class, a decision, None, or a small dict)."""
    if v is None or v == "":
        return "–"
    if isinstance(v, dict):
        if "verified" in v or "differential_verified" in v:
            ok = v.get("verified", v.get("differential_verified"))
            by = v.get("by") or v.get("verified_by") or v.get("differential_verified_by")
            return f"verified by {by}" if ok and by else "verified" if ok else "not verified"
        label = v.get("label") or v.get("review_label")
        decision = v.get("decision") or v.get("review_decision")
        if decision == "unassessable":
            return "unassessable"
        if label is None and decision is None:
            return "not reviewed" if "label" in v or "decision" in v else ", ".join(
                f"{k} {_value_words(x, cell_words)}" for k, x in v.items() if not isinstance(x, dict | list))
        text = _value_words(label, cell_words) if label else "–"
        by = v.get("reviewed_by") or v.get("by")
        return f"{text} ({DECISION_SHORT.get(decision, decision)}{' by ' + by if by else ''})" if decision else text
    if isinstance(v, list):
        return ", ".join(_value_words(x, cell_words) for x in v) or "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    text = str(v)
    if cell_words and text in cell_words:
        return cell_words[text]
    if cell_words and text.endswith(" (AI)") and text[:-5] in cell_words:  # "blast (AI)": the AI's class
        return f"{cell_words[text[:-5]]} (AI)"
    return CLASS_NAMES.get(text, text)


def change_words(change: dict, cell_words: dict[str, str] | None = None) -> dict[str, str]:
    """{"what", "before", "after"} of one amendment change ({target, field_id, field_number, cell_id, before,
    after}): "Field 3, cell 7" / "Blast" / "Lymphocyte". A cell whose reviewer's class is taken back reads "as
    the AI pre-classified"."""
    target = str(change.get("target") or "")
    number = change.get("field_number") or change.get("field_id")
    cell = change.get("cell_id")
    if cell is not None:
        what = f"Field {number}, cell {cell}" if number is not None else f"Cell {cell}"
    elif number is not None:
        what = f"Field {number}" + ("" if target in ("field", "field_review", "") else f" ({target.replace('_', ' ')})")
    else:
        what = _TARGETS.get(target, target.replace("_", " ").capitalize() or "Case")
    before, after = change.get("before"), change.get("after")
    if cell is not None:
        words_before = "as the AI pre-classified" if before is None else _value_words(before, cell_words)
        words_after = "as the AI pre-classified (reviewer's class taken back)" if after is None else _value_words(
            after, cell_words)
    else:
        words_before, words_after = _value_words(before, cell_words), _value_words(after, cell_words)
    return {"what": what, "before": words_before, "after": words_after}

