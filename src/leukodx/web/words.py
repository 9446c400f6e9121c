"""Words a clinician uses: flags, AI calls, case-summary reasons and review decisions, in plain sentences.

The analysis speaks in engineering terms (flag codes such as `out_of_distribution`, reasons with thresholds).
The API keeps those (`flag`, `flag_reason`); pages and the report show only what this module makes of them:
what is wrong, and what to do.
"""

from __future__ import annotations

import re

from leukodx.inference.smear_check import ADVICE as SMEAR_ADVICE

# Words for the classes a model may have (the classes themselves are the analyser's, from its model config); a
# class without words here is shown by its own name.
CLASS_NAMES = {"Benign": "Benign (no blasts)", "Early": "Early pre-B ALL", "Pre": "Pre-B ALL", "Pro": "Pro-B ALL"}
# the call worded as a morphology finding, as a lab reports it (a subtype needs immunophenotyping to be a diagnosis)
CALL_WORDS = {
    "Benign": "No morphological features of ALL (benign lymphoid cells, e.g. hematogones)",
    "Early": "Morphology consistent with early pre-B ALL; confirm by flow cytometry",
    "Pre": "Morphology consistent with pre-B ALL; confirm by flow cytometry",
    "Pro": "Morphology consistent with pro-B ALL; confirm by flow cytometry",
}
DECISION_WORDS = {"confirm": "confirmed the AI suggestion", "override": "overrode the AI suggestion"}
DECISION_SHORT = {"confirm": "confirmed", "override": "overridden"}

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


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def flag_words(flag: str, reason: str = "") -> dict[str, str]:
    """{"title", "problem", "action"} for a field's flag: a short title, what is wrong and what to do."""
    if flag == "ok" or not flag:
        return {"title": FLAG_TITLES["ok"], "problem": "", "action": ""}
    title = FLAG_TITLES.get(flag, "Check this field")
    problem, action = _DEFAULT.get(flag, ("The AI flagged this field.", "Read the field yourself."))
    reason = " ".join((reason or "").split())
    if flag == "low_confidence":
        m = re.search(r"confidence (\d*\.\d+|\d+)", reason)
        if m:
            v = float(m.group(1))
            pct = v * 100 if v <= 1 else v
            problem = f"The AI is unsure about this field (confidence {pct:.0f} %), and it is often wrong on such fields."
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


def reason_words(reason: str) -> str:
    """A case-summary reason (leukodx.inference.summary) in plain words."""
    r = reason.strip()
    if m := re.match(r"(\d+) of (\d+) fields flagged", r):
        n, total = int(m.group(1)), int(m.group(2))
        return (f"{n} of {total} field{'s' if total != 1 else ''} {'is' if n == 1 else 'are'} flagged: read "
                f"{'it' if n == 1 else 'them'} yourself (see each field).")
    if m := re.match(r"case confidence ([0-9.]+)", r):
        return f"The AI is unsure about the case as a whole (confidence {float(m.group(1)) * 100:.0f} %)."
    if m := re.match(r"malignant probability ([0-9.]+) is undecided", r):
        return (f"The AI cannot tell benign from leukemic for this case (probability of leukemia "
                f"{float(m.group(1)) * 100:.0f} %). Decide from the fields.")
    if m := re.match(r"fields disagree: (\d+) malignant, (\d+) benign", r):
        return (f"The fields disagree: {m.group(1)} look leukemic and {m.group(2)} benign. Review each field "
                "before signing off.")
    if r.startswith("no field could be analysed"):
        return "No field could be analysed. Add readable field images."
    if r.startswith("no fields given"):
        return "No fields yet. Add the field images of this smear."
    return _sentence(r.replace("_", " ")[:1].upper() + r.replace("_", " ")[1:])


def call_words(label: str | None) -> str:
    return CALL_WORDS.get(label, label) if label else "No call"
