"""A field's call and its cells: whether they agree (`cells_disagree`), and a single-cell crop's call from its
cell (`crop_call`). Used by the analysis (leukodx.inference.pipeline) and by the fit of the agreement rule
(leukodx.deploy.calibrate)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from leukodx.inference.cell_classes import BLAST, NOT_COUNTED, NOT_LEUKOCYTE, UNIDENTIFIED
from leukodx.inference.types import CellInstance
from leukodx.models.model_config import CellAgreement

# a crop called not leukaemic from its cell is still flagged when its P(blast) is at least this (chosen on val with
# benchmarks/crop_flags.py --blast-doubt: of 0.05-0.3, the highest that flags the most blasts called Benign while
# PBC's normal cells stay unflagged; docs/results/crop-flags)
CROP_BLAST_DOUBT = 0.1


def cells_disagree(label: str, cells: Sequence[CellInstance], benign: Sequence[str], rule: CellAgreement,
                   blast_threshold: float | None = None) -> str:
    """The rule that a field's call must agree with its cells, in a clinician's words ("" when they agree): a
    leukaemic call needs at least `rule.min_blasts` leukocytes the cell model calls blast with P(blast) of at
    least `blast_threshold` (None: `rule.min_blast_probability`); a benign call is questioned when more than
    `rule.max_blast_share_benign` of its counted leukocytes are blasts; any call when at least
    `rule.max_unidentified_share` of its leukocytes are unidentified."""
    trust = rule.min_blast_probability if blast_threshold is None else blast_threshold
    leukocytes = [c for c in cells if c.ai_label is not None and c.ai_label != NOT_LEUKOCYTE]
    counted = [c for c in leukocytes if c.ai_label not in NOT_COUNTED]
    blasts = sum(c.ai_label == BLAST and (c.ai_probabilities or {}).get(BLAST, c.ai_confidence or 0.0) >= trust
                 for c in counted)
    unknown = sum(c.ai_label == UNIDENTIFIED for c in leukocytes)
    strange = (f"the cell model does not recognise {unknown} of its {len(leukocytes)} leukocytes (they may look "
               "unlike the cells it learnt: another stain, camera or magnification)")
    if leukocytes and unknown / len(leukocytes) >= rule.max_unidentified_share:
        return (f"The field is called {label}, but {strange}, so its cells can neither support nor question the "
                "call. Look at the field yourself.")
    if label not in benign:
        if blasts < rule.min_blasts:
            sure = f" with a probability of {100 * trust:.0f} % or more" if trust > 0 else ""
            seen = (f"none of its {len(counted)} leukocytes is recognised as a blast{sure}" if counted else
                    "no leukocyte the cell model could identify was found in it")
            if blasts:  # some, but fewer than the rule asks
                seen = (f"only {blasts} of its {len(counted)} leukocytes {'is' if blasts == 1 else 'are'} recognised "
                        f"as a blast{sure}, and the rule asks for at least {rule.min_blasts}")
            support = "too little" if blasts else "no"
            return (f"The field is called {label} (leukaemic), but {seen}: the call has {support} support in the "
                    "cells. Look at the field yourself.")
    elif counted and blasts >= max(rule.min_blasts, 1) and blasts / len(counted) > rule.max_blast_share_benign:
        return (f"The field is called {label} (not leukaemic), but {blasts} of its {len(counted)} leukocytes look "
                "like blasts. Look at the field yourself.")
    return ""


def crop_call(probabilities: Mapping[str, float], cells: Sequence[CellInstance], benign: Sequence[str]
              ) -> dict[str, float] | None:
    """A single-cell crop's class probabilities from its cell (None: no leukocyte typed in it).

    The field classifier learnt whole fields of one hospital; on a crop of one cell its leukaemic calls follow the
    crop's look, not the cell (PBC's normal cells cut to 120-180 px: about half called leukaemic). The cell model
    types the cell itself. So P(leukaemic) is the highest P(blast) of the crop's leukocytes, shared among the
    leukaemic classes as the field classifier shares it (the subtype from one cell is the field model's guess, and
    its confidence says so), and P(not leukaemic) among the benign classes likewise."""
    typed = [c for c in cells if c.ai_label is not None and c.ai_label != NOT_LEUKOCYTE and c.ai_probabilities]
    if not typed:
        return None
    blast = max(float((c.ai_probabilities or {}).get(BLAST, 0.0)) for c in typed)
    out: dict[str, float] = {}
    for side, share in ((set(benign), 1.0 - blast), (set(probabilities) - set(benign), blast)):
        names = [k for k in probabilities if k in side]
        total = sum(float(probabilities[k]) for k in names)
        for k in names:
            out[k] = share * (float(probabilities[k]) / total if total > 0 else 1.0 / len(names))
    return out
