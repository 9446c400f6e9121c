"""Two checkouts through `leukodx predict`, as a clinic runs it, on the held-out part of every source and on a
lab-shifted copy of it: per source, the share of fields flagged by each checkout and how many fields differ
(label, flag, confidence, cell count, scale; benchmarks/compare_predictions.py's columns) and why (size notes).

    python benchmarks/predict_before_after.py --before /tmp/before/src [--after src] --data ../shared/data \
        [--max 240] --out FILE.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("label", "flag", "confidence", "cell_count", "scale_factor", "scale_source")


def _rows(data: Path, splits: Path, name: str, n: int) -> tuple[Path, list[str]]:
    from leukodx.data import sources
    from leukodx.data.split import read_split

    root = data / sources.SOURCES[name].folder
    rows = read_split(sources.split_path(name, splits), part="test")
    return root, [r["path"] for r in rows[::max(1, len(rows) // n)][:n]] if n else [r["path"] for r in rows]


def _predict(src: Path, folder: Path, out: Path) -> dict[str, dict]:
    env = os.environ | {"PYTHONPATH": str(src.resolve())}
    subprocess.run([sys.executable, "-m", "leukodx", "predict", str(folder), "--out", str(out), "--no-heatmap"],
                   check=True, capture_output=True, env=env)
    return {Path(r["path"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}


def main() -> None:
    from leukodx.evaluation.shift import lab_shift, rng_for

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the other checkout's src/")
    ap.add_argument("--after", type=Path, default=ROOT / "src")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--splits", type=Path, default=ROOT / "benchmarks" / "splits")
    ap.add_argument("--max", type=int, default=240, help="held-out images per source, evenly spaced (0: all)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res: dict = {"before": str(a.before), "after": str(a.after), "severity": 1.0, "sources": {}}
    with tempfile.TemporaryDirectory(prefix="before-after-") as tmp:
        t = Path(tmp)
        for name in ("taleqani", "pbc", "raabin", "chula"):
            root, paths = _rows(a.data, a.splits, name, a.max)
            for kind in ("original", "lab_shifted"):
                d = t / name / kind
                d.mkdir(parents=True)
                for p in paths:
                    rgb = np.asarray(Image.open(root / p).convert("RGB"))
                    stem = p.replace("/", "__")
                    if kind == "original":
                        Image.fromarray(rgb).save(d / f"{stem}.png")
                    else:
                        Image.fromarray(lab_shift(rgb, rng_for(0, p), severity=1.0)).save(d / f"{stem}.jpg", quality=95)
                b = _predict(a.before, d, t / name / f"{kind}-before")
                f = _predict(a.after, d, t / name / f"{kind}-after")
                diff = [k for k in b if any(b[k].get(c) != f[k].get(c) for c in COLUMNS)]
                res["sources"].setdefault(name, {})[kind] = {
                    "n": len(b), "flagged_before": round(np.mean([r["flag"] != "ok" for r in b.values()]), 4),
                    "flagged_after": round(np.mean([r["flag"] != "ok" for r in f.values()]), 4),
                    "fields_differing": len(diff),
                    "single_cell_crops_after": sum("single-cell crop" in r["size_note"] for r in f.values()),
                    "examples": [{"file": k, **{c: (b[k].get(c), f[k].get(c)) for c in COLUMNS
                                                if b[k].get(c) != f[k].get(c)}} for k in diff[:5]]}
                print(name, kind, {k: v for k, v in res["sources"][name][kind].items() if k != "examples"}, flush=True)
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
