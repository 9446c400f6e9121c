"""Leukocyte counting benchmark: does the count hold at any magnification and on another camera? (issue 10)

Every field goes through `leukodx.inference.pipeline.load_analyzer()` (what `leukodx predict` and the web app run:
smear check and red-cell scale, resampling, windows, segmenter, instances). Per set:

- ``synthetic``: synthetic fields (leukodx.data.synthetic.synthetic_instances) whose leukocytes are known exactly,
  at 224 px and rescaled 0.5x, 2x and 4x (the same cells, so the counts must not change);
- ``held_out``: the test rows of the split (never seen in training or model choice), against the connected
  components of their repaired reference masks (leukodx.data.reference_masks; the HSV masks where valid);
- ``rescaled``: the same test fields rescaled 0.5x, 2x and 3x (the count should equal the 1x count);
- ``other_camera``: fields built to imitate another lab's camera: a 4:3 crop of a test field (168 x 126 px of the
  224-px field, placed at random) enlarged to 640 x 480 (3.8x the magnification) by
  leukodx.evaluation.shift.other_camera, then its synthetic lab shift (stain, white balance, blur, JPEG);
  reference = the same window of its reference mask.

Metrics: count exact (% of fields), count MAE, the share of reference leukocytes (components; synthetic: true
instances) that hold exactly one detected cell centre, fields counted (every field gets a count, flagged or not)
and flagged. Reference components merge touching cells, so on real fields a perfect counter would still be
"wrong" where the reference joins two cells: those numbers are lower bounds.

    python benchmarks/counting.py --data ../shared/data/all-taleqani --split benchmarks/splits/taleqani-sgdc-seed0.csv \\
        --out docs/results/counting
    python benchmarks/counting.py --synthetic-only --out /tmp/counting   # no data needed
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from leukodx.cpus import usable_cores
from leukodx.data.images import read_reference_mask, read_rgb
from leukodx.data.reference_masks import repaired_reference
from leukodx.data.split import read_split
from leukodx.data.synthetic import synthetic_instances
from leukodx.evaluation.shift import lab_shift, other_camera
from leukodx.inference.instances import clean_mask
from leukodx.inference.pipeline import load_analyzer

CLASSES = ("Benign", "Early", "Pre", "Pro")
EIGHT = np.ones((3, 3), bool)
REF_MIN_AREA = 40  # px at the training scale (the instance rule's speck size)


def resize(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                   Image.Resampling.BICUBIC))


def resize_labels(lab: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(lab.astype(np.int32), mode="I").resize((shape[1], shape[0]),
                                                                              Image.Resampling.NEAREST))


def reference_labels(mask: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Components of a reference mask after the speck rule, `scale` = its px per training-scale px."""
    m = clean_mask(mask, max(1, round(REF_MIN_AREA * scale * scale)), round(150 * scale * scale))
    return ndi.label(m, structure=EIGHT)[0]


def score_field(result, ref_labels: np.ndarray) -> dict:
    n_ref = int(ref_labels.max())
    hits = np.zeros(n_ref + 1, int)
    h, w = ref_labels.shape
    for c in result.cells:
        r, q = int(round(c.centroid[0])), int(round(c.centroid[1]))
        if 0 <= r < h and 0 <= q < w:
            hits[ref_labels[r, q]] += 1
    one = int((hits[1:] == 1).sum())
    return {"n_ref": n_ref, "n_pred": int(result.cell_count), "one_centre": one, "flag": result.flag,
            "scale_factor": result.scale_factor, "rbc_diameter_px": result.rbc_diameter_px}


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {"n_fields": 0}
    err = np.array([r["n_pred"] - r["n_ref"] for r in rows])
    n_ref = sum(r["n_ref"] for r in rows)
    return {"n_fields": len(rows), "count_exact_pct": round(100 * float(np.mean(err == 0)), 2),
            "count_mae": round(float(np.mean(np.abs(err))), 3), "count_bias": round(float(np.mean(err)), 3),
            "reference_cells": n_ref,
            "one_centre_pct": round(100 * sum(r["one_centre"] for r in rows) / max(n_ref, 1), 2),
            "counted_pct": 100.0, "flagged_pct": round(100 * float(np.mean([r["flag"] != "ok" for r in rows])), 2),
            "scale_known_pct": round(100 * float(np.mean([r["scale_factor"] is not None for r in rows])), 2)}


def synthetic_set(analysis, n: int) -> dict:
    out: dict[str, list[dict]] = {}
    for i in range(n):
        img, lab = synthetic_instances(CLASSES[i % 4], 224, seed=9000 + i)
        for f in (1.0, 0.5, 2.0, 4.0):
            x = img if f == 1.0 else resize(img, f)
            ref = lab if f == 1.0 else resize_labels(lab, x.shape[:2])
            ref = ref * clean_mask(ref > 0, max(1, round(REF_MIN_AREA * f * f)), 0)
            r = analysis.analyze(x)
            out.setdefault(f"x{f:g}", []).append(score_field(r, ref))
    return {k: summarize(v) | {"_rows": v} for k, v in out.items()}


def test_rows(split: Path, limit: int | None, subset: str = "test") -> list[dict]:
    rows = [r for r in read_split(split) if r["split"] == subset]
    return rows[:limit] if limit else rows


def read_pair(data: Path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    rgb = read_rgb(data / rel)
    hsv = read_reference_mask(data / rel.replace("Original/", "Segmented/", 1), size=rgb.shape[1::-1], warn=False)
    return rgb, repaired_reference(rgb, hsv)[0]


def real_sets(analysis, data: Path, split: Path, limit: int | None, subset: str = "test") -> dict:
    sets: dict[str, list[dict]] = {"held_out": [], "rescaled_x0.5": [], "rescaled_x2": [], "rescaled_x3": [],
                                   "other_camera": []}
    agree = {k: 0 for k in ("rescaled_x0.5", "rescaled_x2", "rescaled_x3")}
    per_class: dict[str, list[dict]] = {}
    rng = np.random.default_rng(0)
    rows = test_rows(split, limit, subset)
    for i, row in enumerate(rows):
        rgb, ref_mask = read_pair(data, row["path"])
        ref = reference_labels(ref_mask)
        base = analysis.analyze(rgb)
        rec = score_field(base, ref)
        sets["held_out"].append(rec)
        per_class.setdefault(row["label"], []).append(rec)
        for f in (0.5, 2.0, 3.0):
            key = f"rescaled_x{f:g}"
            x = resize(rgb, f)
            r = analysis.analyze(x)
            sets[key].append(score_field(r, resize_labels(ref, x.shape[:2])))
            agree[key] += int(r.cell_count == base.cell_count)
        big, big_ref = other_camera(rgb, rng, window=0.75, mask=ref_mask)
        r = analysis.analyze(lab_shift(big, 10_000 + i))
        sets["other_camera"].append(score_field(r, reference_labels(big_ref, 640 / 168)))
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(rows)} fields", flush=True)
    out = {k: summarize(v) | {"_rows": v} for k, v in sets.items()}
    for k, n in agree.items():
        out[k]["same_count_as_1x_pct"] = round(100 * n / max(len(rows), 1), 2)
    out["held_out"]["per_class"] = {c: summarize(v) for c, v in sorted(per_class.items())}
    return out


def machine() -> dict:
    import os

    return {"cores": usable_cores(), "cpu": platform.processor() or platform.machine(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}


def write(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    slim = {k: ({kk: vv for kk, vv in v.items() if kk != "_rows"} if isinstance(v, dict) else v) for k, v in
            res.items()}
    for k, v in res.get("sets", {}).items():
        slim["sets"][k] = {kk: vv for kk, vv in v.items() if kk != "_rows"}
    (out / "counting.json").write_text(json.dumps(slim, indent=2) + "\n")
    lines = ["# Leukocyte counting benchmark", "", f"Command: `{res['command']}`", "",
             f"Models: {res['models']}. Machine: {res['machine']}. Wall time {res['wall_seconds']:.0f} s.", "",
             "| set | fields | count exact | count MAE | bias | one centre per reference cell | flagged | "
             "scale known | same count as 1x |", "|---|---|---|---|---|---|---|---|---|"]
    for k, v in slim["sets"].items():
        lines.append(f"| {k} | {v['n_fields']} | {v.get('count_exact_pct', 'n/a')} % | {v.get('count_mae', 'n/a')} | "
                     f"{v.get('count_bias', 'n/a')} | {v.get('one_centre_pct', 'n/a')} % | {v.get('flagged_pct', 'n/a')} % | "
                     f"{v.get('scale_known_pct', 'n/a')} % | {v.get('same_count_as_1x_pct', '')} |")
    lines += ["", "Real fields are scored against connected components of their (repaired) reference masks, which join",
              "touching cells; synthetic fields against their exact instances."]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--split", type=Path, default=Path("benchmarks/splits/taleqani-sgdc-seed0.csv"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--classifier", type=Path)
    ap.add_argument("--segmenter", type=Path)
    ap.add_argument("--limit", type=int, help="At most N fields of --subset.")
    ap.add_argument("--subset", default="test", choices=("test", "val"),
                    help="Rows of --split to count on: test (the report) or val (choosing parameters).")
    ap.add_argument("--instances", type=json.loads, help='JSON overrides of the segmenter\'s thresholds.instances, '
                    'e.g. \'{"close_radius": 2, "min_distance": 12}\' (choose them on --subset val).')
    ap.add_argument("--synthetic", type=int, default=48, help="Synthetic fields (each at 4 scales).")
    ap.add_argument("--synthetic-only", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    mach = machine()
    analysis = load_analyzer(args.classifier, args.segmenter)
    if args.instances and analysis.segmenter is not None:
        analysis.segmenter.instance_params = {**analysis.segmenter.instance_params, **args.instances}
    sets = {f"synthetic_{k}": v for k, v in synthetic_set(analysis, args.synthetic).items()}
    if not args.synthetic_only:
        if args.data is None or not (args.data / "Original").is_dir():
            raise SystemExit("--data must be a folder with Original/ and Segmented/ (or use --synthetic-only).")
        sets.update(real_sets(analysis, args.data, args.split, args.limit, args.subset))
    d = analysis.describe()
    res = {"command": "python benchmarks/counting.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
        for k, v in vars(args).items() if v not in (None, False)),
        "models": f"classifier {d.get('classifier', {}).get('dir')}, segmenter {d.get('segmenter', {}).get('dir')}",
        "machine": mach, "wall_seconds": time.perf_counter() - t0, "sets": sets}
    write(args.out, res)
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
