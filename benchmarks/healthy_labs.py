"""Healthy fields of two real other labs through `leukodx predict` (issue 30): every malignant call is wrong there.

Chulalongkorn (Bangkok clinic camera, `chula-wbc`: normal leukocytes, no leukemia) and Raabin (other Iranian labs,
`raabin-fields`: normal leukocytes, no leukemia). Reports per lab: fields with a class call, called malignant
(Early / Pre / Pro), **called malignant without a flag** (target <= 5 %), flagged (by flag), and no call (no
smear, or no leukocyte found).

    python benchmarks/healthy_labs.py --data ../shared/data --out docs/results/issue30/healthy_labs.json \
        [--chula-split benchmarks/splits/chula-wbc-seed0.csv] [--raabin-split benchmarks/splits/raabin-fields-seed0.csv]

With a split file only its test rows are used (a model that trained on a lab's other rows is scored on rows it
never saw); without one, every field of the lab.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fields(folder: Path, split: Path | None, column: str) -> list[Path]:
    if split is None:
        return sorted((folder / "images").glob("*.jpg"))
    with open(split, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    return [folder / (r[column] if "/" in r[column] else f"images/{r[column]}") for r in rows]


def score(paths: list[Path], benign: str = "Benign") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "in"
        listing.mkdir()
        for p in paths:  # one folder of links: one predict run
            (listing / p.name).symlink_to(p.resolve())
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "leukodx", "predict", str(listing), "--out", f"{tmp}/out",
                        "--no-heatmap"], check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        with open(f"{tmp}/out/predictions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    called = [r for r in rows if r["label"]]
    malignant = [r for r in called if r["label"] != benign]
    n = len(rows)
    return {"n": n, "called": len(called), "no_call": n - len(called),
            "called_malignant": round(len(malignant) / n, 4),
            "malignant_unflagged": round(sum(r["flag"] == "ok" for r in malignant) / n, 4),
            "flagged": round(sum(r["flag"] != "ok" for r in rows) / n, 4),
            "flags": dict(Counter(r["flag"] for r in rows)), "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--chula-split", type=Path, default=None)
    ap.add_argument("--raabin-split", type=Path, default=ROOT / "benchmarks/splits/raabin-fields-seed0.csv")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res = {"chula": score(fields(a.data / "chula-wbc", a.chula_split, "path" if a.chula_split else "file")),
           "raabin": score(fields(a.data / "raabin-fields", a.raabin_split, "path")),
           "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
           "chula_split": str(a.chula_split), "raabin_split": str(a.raabin_split)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    for lab in ("chula", "raabin"):
        r = res[lab]
        print(f"{lab}: {r['n']} fields, called malignant {100 * r['called_malignant']:.1f} %, malignant unflagged "
              f"{100 * r['malignant_unflagged']:.1f} % (target <= 5 %), flagged {100 * r['flagged']:.1f} %, "
              f"no call {r['no_call']}")


if __name__ == "__main__":
    main()
