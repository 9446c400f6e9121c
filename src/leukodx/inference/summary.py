"""The case rule: several fields of one smear summarised into one call. One pure function, used by `predict`,
the web application and its tests alike.

    >>> case = summarize_case(results, classes=["Benign", "Early", "Pre", "Pro"], low_confidence=0.7)
    >>> case.label, case.malignant_probability, case.needs_review, case.reasons
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leukodx import MALIGNANT_CLASSES
from leukodx.inference.types import FLAGS, CaseSummary, FieldResult

UNDECIDED = (0.25, 0.75)  # case malignant probability in this range -> needs review


def _malignant(mean: np.ndarray, classes: Sequence[str]) -> float:
    if "Benign" in classes:
        return float(1 - mean[list(classes).index("Benign")])
    return float(sum(mean[i] for i, c in enumerate(classes) if c in MALIGNANT_CLASSES))


def summarize_case(results: Sequence[FieldResult], classes: Sequence[str], low_confidence: float) -> CaseSummary:
    """Mean calibrated probabilities over the analysed (readable) fields, total cell count, the case call and
    its confidence; needs_review when any field is flagged, the fields disagree on benign vs malignant, the
    case confidence is under `low_confidence`, or the malignant probability is undecided."""
    classes = list(classes)
    flags = dict.fromkeys(FLAGS, 0)
    for r in results:
        flags[r.flag] = flags.get(r.flag, 0) + 1
    done = [r for r in results if r.label is not None]
    if not done:
        return CaseSummary(n_fields=len(results), n_analysed=0, label=None, confidence=0.0,
                           malignant_probability=0.0, mean_probabilities=dict.fromkeys(classes, 0.0),
                           total_cell_count=0, flags=flags, needs_review=True,
                           reasons=["no field could be analysed" if results else "no fields given"])
    mean = np.mean([[r.probabilities.get(c, 0.0) for c in classes] for r in done], axis=0)
    k = int(mean.argmax())
    conf = float(mean[k])
    mal = _malignant(mean, classes)
    reasons: list[str] = []
    flagged = {f: n for f, n in flags.items() if f != "ok" and n}
    if flagged:
        reasons.append(f"{sum(flagged.values())} of {len(results)} fields flagged ("
                       + ", ".join(f"{n} {f.replace('_', ' ')}" for f, n in flagged.items()) + ")")
    if conf < low_confidence:
        reasons.append(f"case confidence {conf:.2f} below {low_confidence:.2f}")
    if UNDECIDED[0] <= mal <= UNDECIDED[1]:
        reasons.append(f"malignant probability {mal:.2f} is undecided (between {UNDECIDED[0]} and {UNDECIDED[1]})")
    n_mal = sum(r.label in MALIGNANT_CLASSES for r in done)
    if 0 < n_mal < len(done):
        reasons.append(f"fields disagree: {n_mal} malignant, {len(done) - n_mal} benign")
    return CaseSummary(
        n_fields=len(results), n_analysed=len(done), label=classes[k], confidence=round(conf, 6),
        malignant_probability=round(mal, 6),
        mean_probabilities={c: round(float(v), 6) for c, v in zip(classes, mean, strict=True)},
        total_cell_count=int(sum(r.cell_count for r in done)), flags=flags, needs_review=bool(reasons),
        reasons=reasons,
    )
