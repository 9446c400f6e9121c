"""The case rule: several fields of one smear summarised into one call. One pure function, used by `predict`,
the web application and its tests alike.

    >>> case = summarize_case(results, classes=["Benign", "Early", "Pre", "Pro"], low_confidence=0.7)
    >>> case.label, case.malignant_probability, case.needs_review, case.reasons

The malignant-probability rule is written once, here (`malignant_probability`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from leukodx.inference.types import FLAGS, CaseSummary, FieldResult
from leukodx.models.model_config import CaseRule


def malignant_probability(probabilities: Mapping[str, float], benign: Sequence[str] | None = None) -> float:
    """The one malignant-probability rule: 1 - the summed probability of the benign classes (the model's
    `case_rule.benign`; None: CaseRule's default)."""
    return float(1.0 - sum(float(probabilities.get(c, 0.0)) for c in (CaseRule().benign if benign is None else benign)))


def summarize_case(results: Sequence[FieldResult], classes: Sequence[str], low_confidence: float,
                   rule: CaseRule | None = None) -> CaseSummary:
    """Mean calibrated probabilities over the analysed (readable) fields, total cell count, the case call and
    its confidence; needs_review when any field is flagged, the fields disagree on benign vs malignant, the
    case confidence is under `low_confidence`, or the malignant probability is undecided (`rule.undecided`)."""
    rule = rule or CaseRule()
    undecided = rule.undecided
    classes = list(classes)
    flags = dict.fromkeys(FLAGS, 0)
    for r in results:
        flags[r.flag] = flags.get(r.flag, 0) + 1
    done = [r for r in results if r.label is not None]
    if not done:
        return CaseSummary(n_fields=len(results), n_analysed=0, label=None, confidence=0.0,
                           malignant_probability=0.0, mean_probabilities=dict.fromkeys(classes, 0.0),
                           total_cell_count=0, flags=flags, needs_review=True,
                           reasons=["no fields given" if not results else "no leukocyte found in any field" if all(
                               "leukocyte" in r.no_call_reason for r in results) else "no field could be analysed"])
    mean = np.mean([[r.probabilities.get(c, 0.0) for c in classes] for r in done], axis=0)
    k = int(mean.argmax())
    conf = float(mean[k])
    mal = malignant_probability(dict(zip(classes, mean, strict=True)), rule.benign)
    reasons: list[str] = []
    flagged = {f: n for f, n in flags.items() if f != "ok" and n}
    if flagged:
        reasons.append(f"{sum(flagged.values())} of {len(results)} fields flagged ("
                       + ", ".join(f"{n} {f.replace('_', ' ')}" for f, n in flagged.items()) + ")")
    if conf < low_confidence:
        reasons.append(f"case confidence {conf:.2f} below {low_confidence:.2f}")
    if undecided[0] <= mal <= undecided[1]:
        reasons.append(f"malignant probability {mal:.2f} is undecided (between {undecided[0]} and {undecided[1]})")
    n_mal = sum(r.label not in rule.benign for r in done)
    if 0 < n_mal < len(done):
        reasons.append(f"fields disagree: {n_mal} malignant, {len(done) - n_mal} benign")
    return CaseSummary(
        n_fields=len(results), n_analysed=len(done), label=classes[k], confidence=round(conf, 6),
        malignant_probability=round(mal, 6),
        mean_probabilities={c: round(float(v), 6) for c, v in zip(classes, mean, strict=True)},
        total_cell_count=int(sum(r.cell_count for r in done)), flags=flags, needs_review=bool(reasons),
        reasons=reasons,
    )
