"""Single-cell crops through the whole analysis (`leukodx predict`'s engine): PBC leukocyte crops of one split
cut and resized as labs export single cells, scored on whether the leukocyte is counted and typed as its class.

    python benchmarks/single_cell_crops.py --split val --out FILE [--segmenter DIR] [--pad mirror|auto] [--n 120] \
        [--nucleus-per-rbc R]

Variants of each crop (360 x 363 px, red cells 68 px): `cut120`, its central 120 px (the leukocyte fills it and
is cut by the edges); `cut180`; `cut240to120`, its central 240 px resized to 120 px (the whole cell in a small
crop); `to257`, the whole crop resized to 257 px. `--pad mirror` frames every cell crop of the cell model by
mirroring (the rule before issue 28's cut-cell work); `auto` is `inference.cell_classifier.crop_cells`' default.
Scores: `counted` (at least one leukocyte counted), `right_type` (a cell typed as the crop's class), `called`
(the field got a class call), `called_leukaemic` (a leukaemic field call on these normal cells),
`called_leukaemic_unflagged` (such a call without a flag) and `flagged` (any flag). Platelet and erythroblast crops (whole) are scored apart:
`outlined`, `counted` (the field's count includes a cell) and `typed_as_its_kind`. The scale is the analysis' own estimate (no lab scale given).

`taleqani_cells_to257`: a cell-centred crop of every other Taleqani field of the split's part (3.5 red cells, 60 px
wide, enlarged to 257 px: `evaluation.cells.taleqani_cell_crops`), an ALL hospital's blasts and hematogones.
`right_type`: a cell typed blast in a leukaemic field's crop, lymphocyte in a Benign one (the field's class is the
label); also per group, on the crops whose scale came from the nucleus's size (`nucleus_estimate`), how often
the field call is leukaemic, is right (`call_right`: leukaemic on a blast's crop only), and is flagged when right
and when wrong; `subtype_right`: the field's class (Early, Pre, Pro) among its leukaemic crops called leukaemic.

Sources: PBC (Acevedo et al., Data in Brief 30, 105474, 2020; CC BY 4.0); split benchmarks/splits/pbc-seed0.csv.
ALL Taleqani (Aria et al., Mendeley Data, doi:10.17632/htwtjjd8d4.1; CC BY 4.0); split
benchmarks/splits/taleqani-sgdc-seed0.csv.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leukodx.evaluation.cells import centre_square

ROOT = Path(__file__).resolve().parents[1]


def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BOX))


VARIANTS = {"cut120": lambda a: centre_square(a, 120), "cut180": lambda a: centre_square(a, 180),
            "cut240to120": lambda a: _resize(centre_square(a, 240), 120), "to257": lambda a: _resize(a, 257)}


def taleqani_cells(analysis, root: Path, part: str, benign) -> dict:
    from leukodx.evaluation.cells import taleqani_cell_crops

    crops = taleqani_cell_crops(root, ROOT / "benchmarks/splits/taleqani-sgdc-seed0.csv", (part,), every=2)
    rs = analysis.analyze_many([_resize(c, 257) for _, _, c in crops], batch_size=8)
    rows = [("lymphocyte" if label in benign else "blast", r) for (_, label, _), r in zip(crops, rs, strict=True)]
    # the subtype of a leukaemic crop called leukaemic: the field model's reading of one cell
    sub = [label == r.label for (_, label, _), r in zip(crops, rs, strict=True)
           if label not in benign and r.label is not None and r.label not in benign]

    def right(want: str, r) -> bool:
        return r.label is not None and (r.label not in benign) == (want == "blast")

    def share(xs: list) -> float | None:
        return round(float(np.mean(xs)), 4) if xs else None

    def score(sel: list) -> dict:
        return {"n": len(sel), "counted": round(float(np.mean([r.cell_count > 0 for _, r in sel])), 4) if sel else None,
                "right_type": round(float(np.mean([any(c.ai_label == want for c in r.cells) for want, r in sel])), 4)
                if sel else None,
                "called_leukaemic": round(float(np.mean([r.label is not None and r.label not in benign
                                                         for _, r in sel])), 4) if sel else None,
                # the call right (leukaemic on a blast's crop, not on a lymphocyte's), and flags on right / wrong calls
                "call_right": round(float(np.mean([right(w, r) for w, r in sel])), 4) if sel else None,
                "flagged_when_right": share([r.flag != "ok" for w, r in sel if right(w, r)]),
                "flagged_when_wrong": share([r.flag != "ok" for w, r in sel if r.label is not None and not right(w, r)])}

    nucleus = [(w, r) for w, r in rows if r.scale_source.startswith("estimated from the leukocyte's nucleus")]
    return {**score(rows), "subtype_right": share(sub), "n_subtype": len(sub),
            "blast": score([x for x in rows if x[0] == "blast"]),
            "lymphocyte": score([x for x in rows if x[0] == "lymphocyte"]), "nucleus_estimate": score(nucleus),
            "scale_sources": {k: sum(r.scale_source == k for _, r in rows) for k in sorted({r.scale_source for _, r in rows})}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pbc")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--taleqani", type=Path, default=ROOT.parent / "shared" / "data" / "all-taleqani")
    ap.add_argument("--segmenter", type=Path, default=None, help="model directory (default: the bundled one)")
    ap.add_argument("--pad", default="auto", choices=("auto", "mirror"))
    ap.add_argument("--n", type=int, default=120, help="crops, evenly spaced over the split's leukocyte rows")
    ap.add_argument("--nucleus-per-rbc", type=float, default=None, help="try another smear_check.NUCLEUS_PER_RBC "
                    "(the nucleus's diameter over the red cells', where the scale is estimated from the nucleus)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from leukodx.data.cell_references import NOT_LEUKOCYTE_CLASSES
    from leukodx.data.images import read_rgb
    from leukodx.data.split import read_split
    from leukodx.inference import cell_classifier
    from leukodx.inference.pipeline import load_analyzer

    if a.nucleus_per_rbc is not None:
        from leukodx.inference import smear_check

        smear_check.NUCLEUS_PER_RBC = a.nucleus_per_rbc
    if a.pad == "mirror":
        crop = cell_classifier.crop_cells
        cell_classifier.crop_cells = lambda *x, **k: crop(*x, **{**k, "pad": "symmetric"})  # type: ignore[assignment]
    rows = [r for r in read_split(ROOT / "benchmarks/splits/pbc-seed0.csv", part=a.split)
            if r["label"] not in NOT_LEUKOCYTE_CLASSES]
    rows = rows[::max(1, len(rows) // a.n)][:a.n]
    analysis = load_analyzer(segmenter_dir=a.segmenter)
    assert analysis.classifier is not None
    benign = analysis.classifier.config.case_rule.benign
    t0 = time.perf_counter()
    from leukodx.inference.smear_check import NUCLEUS_PER_RBC

    res: dict = {"split": a.split, "pad": a.pad, "nucleus_per_rbc": NUCLEUS_PER_RBC, "segmenter": str(a.segmenter or "bundled"), "n": len(rows),
                 "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    for name, fn in VARIANTS.items():
        rs = analysis.analyze_many([fn(read_rgb(a.data / r["path"])) for r in rows], batch_size=8)
        res[name] = {"counted": round(float(np.mean([r.cell_count > 0 for r in rs])), 4),
                     "right_type": round(float(np.mean([any(c.ai_label == r0["label"] for c in r.cells)
                                                        for r, r0 in zip(rs, rows, strict=True)])), 4),
                     "called": round(float(np.mean([r.label is not None for r in rs])), 4),
                     # these are normal cells: a leukaemic field call on one is wrong, and should be flagged
                     "called_leukaemic": round(float(np.mean([r.label is not None and r.label not in benign
                                                              for r in rs])), 4),
                     "called_leukaemic_unflagged": round(float(np.mean([
                         r.label is not None and r.label not in benign and r.flag == "ok" for r in rs])), 4),
                     "flagged": round(float(np.mean([r.flag != "ok" for r in rs])), 4)}
        print(name, res[name], flush=True)
    # the crops of what is no leukocyte (whole, as exported): a platelet should get no leukocyte counted, and an
    # erythroblast (a nucleated red cell, which a differential reports apart) its own type
    for kind in sorted(NOT_LEUKOCYTE_CLASSES):
        others = [r for r in read_split(ROOT / "benchmarks/splits/pbc-seed0.csv", part=a.split) if r["label"] == kind]
        others = others[::max(1, len(others) // a.n)][:a.n]
        rs = analysis.analyze_many([read_rgb(a.data / r["path"]) for r in others], batch_size=8)
        res[kind] = {"n": len(rs), "outlined": round(float(np.mean([len(r.cells) > 0 for r in rs])), 4),
                     "counted": round(float(np.mean([r.cell_count > 0 for r in rs])), 4),
                     "typed_as_its_kind": round(float(np.mean([any(c.ai_label == kind for c in r.cells)
                                                               for r in rs])), 4)}
        print(kind, res[kind], flush=True)
    if (a.taleqani / "Segmented").is_dir():
        res["taleqani_cells_to257"] = taleqani_cells(analysis, a.taleqani, a.split, benign)
        print("taleqani_cells_to257", res["taleqani_cells_to257"], flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
