"""Which flags single-cell crops get, and whether each flag falls on right or wrong calls.

The crops of `single_cell_crops.py`: 120 PBC normal leukocytes of the `--split` part, whole and resized to 257 px
(`to257`) and cut to their central 240 px then resized to 120 (`cut240to120`), and the Taleqani cell crops
(every second reference cell of the part's fields, 257 px; the label is the field's class). A call on a PBC crop
is right when it is benign; on a Taleqani crop when it is leukaemic exactly when its field is.

Per set: `flags` counts each flag, split by whether the call was made from the crop's cell ("flag|True") or not;
`calls` counts the calls by flag and by right ("flag|True") or wrong; `reasons` the out-of-distribution reasons.

    python benchmarks/crop_flags.py --split val --out FILE [--blast-doubt T] [--pbc ../shared/data/pbc]
        [--taleqani ../shared/data/all-taleqani]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from single_cell_crops import ROOT, VARIANTS, _resize

from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES
from leukodx.data.images import read_rgb
from leukodx.data.split import read_split
from leukodx.evaluation.cells import taleqani_cell_crops
from leukodx.inference.pipeline import load_analyzer


def tally(items: list) -> dict:
    """items: (right or None without a call, FieldResult)."""
    flags, calls = Counter(), Counter()
    for right, r in items:
        flags[f"{r.flag}|{'called from its cell' in (r.size_note or '')}"] += 1
        if r.label is not None:
            calls[f"{r.flag}|{right}"] += 1
    reasons = Counter((r.flag_reason or "")[:60] for _, r in items if r.flag == "out_of_distribution")
    return {"n": len(items), "flags": dict(flags), "calls": dict(calls), "reasons": dict(reasons)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--pbc", type=Path, default=ROOT.parent / "shared" / "data" / "pbc")
    ap.add_argument("--taleqani", type=Path, default=ROOT.parent / "shared" / "data" / "all-taleqani")
    ap.add_argument("--blast-doubt", type=float, default=None, help="try another CROP_BLAST_DOUBT (a crop called "
                    "not leukaemic from its cell is flagged when its P(blast) is at least this; 1.01: never)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.blast_doubt is not None:
        from leukodx.inference import pipeline

        pipeline.CROP_BLAST_DOUBT = a.blast_doubt
    analysis = load_analyzer()
    assert analysis.classifier is not None
    benign = analysis.classifier.config.case_rule.benign
    rows = [r for r in read_split(ROOT / "benchmarks/splits/pbc-seed0.csv", part=a.split)
            if r["label"] not in NOT_LEUKOCYTE_CLASSES]
    rows = rows[::max(1, len(rows) // 120)][:120]
    from leukodx.inference import pipeline

    out: dict = {"split": a.split, "blast_doubt": pipeline.CROP_BLAST_DOUBT}
    for name in ("to257", "cut240to120"):
        rs = analysis.analyze_many([VARIANTS[name](read_rgb(a.pbc / r["path"])) for r in rows], batch_size=8)
        out[f"pbc_{name}"] = tally([(r.label in benign if r.label else None, r) for r in rs])
        print(name, out[f"pbc_{name}"], flush=True)
    crops = taleqani_cell_crops(a.taleqani, ROOT / "benchmarks/splits/taleqani-sgdc-seed0.csv", (a.split,), every=2)
    rs = analysis.analyze_many([_resize(c, 257) for _, _, c in crops], batch_size=8)
    out["taleqani_cells"] = tally([((r.label in benign) == (label in benign) if r.label else None, r)
                                   for (_, label, _), r in zip(crops, rs, strict=True)])
    print("taleqani_cells", out["taleqani_cells"], flush=True)
    a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
