"""Contact sheets of the whole-cell / nucleus references (docs/results/cell-references/{taleqani,raabin,pbc,chula}.jpg)
and the splits of the new sources (benchmarks/splits/{raabin-fields,pbc}-seed0.csv).

    python benchmarks/cell_references_sheet.py [--data /work/shared/data] [--n 24] [--seed 0] [--splits] \
        [--only taleqani,raabin,pbc,chula]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

from leukodx.data import sources
from leukodx.data.cell_references import contact_sheet, overlay
from leukodx.data.split import read_split, write_split

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default=str(ROOT / "docs/results/cell-references"))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", action="store_true", help="also write benchmarks/splits/{raabin-fields,pbc}-seed0.csv")
    ap.add_argument("--only", default="taleqani,raabin,pbc")
    a = ap.parse_args()
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    only = a.only.split(",")

    fields, _ = sources.read_raabin_fields(data / "raabin-fields")
    pbc = sources.read_pbc(data / "pbc")
    if a.splits:
        write_split(sources.source_split(sources.raabin_rows(fields), a.seed), None,
                    ROOT / f"benchmarks/splits/raabin-fields-seed{a.seed}.csv")
        write_split(sources.source_split(pbc, a.seed), None, ROOT / f"benchmarks/splits/pbc-seed{a.seed}.csv")
    if "taleqani" in only:
        rows = read_split(ROOT / "benchmarks/splits/taleqani-sgdc-seed0.csv")
        refs = [sources.taleqani_field_reference(data / "all-taleqani", r["path"]) for r in rng.sample(rows, a.n)]
        Image.fromarray(contact_sheet([overlay(r, 224) for r in refs])).save(out / "taleqani.jpg", quality=72)
    if "raabin" in only:
        refs = [sources.raabin_field_reference(data / "raabin-fields", f) for f in rng.sample(fields, a.n)]
        Image.fromarray(contact_sheet([overlay(r, 240) for r in refs])).save(out / "raabin.jpg", quality=80)
    if "pbc" in only:
        by_class: dict[str, list] = {}
        for p, c in pbc:
            by_class.setdefault(c, []).append(p)
        pick = [(p, c) for c in sources.PBC_CLASSES for p in rng.sample(by_class[c], a.n // len(sources.PBC_CLASSES))]
        refs = [sources.pbc_crop_reference(data / "pbc", p, c) for p, c in pick]
        Image.fromarray(contact_sheet([overlay(r, 200) for r in refs], columns=6)).save(out / "pbc.jpg", quality=80)
    if "chula" in only:  # labelled training fields (the split by slide)
        rows = [r for r in read_split(ROOT / "benchmarks/splits/chula-wbc-seed0.csv", part="train")
                if (data / "chula-wbc" / "labels" / f"{Path(r['path']).stem}.txt").is_file()]
        refs = [sources.chula_field_reference(data / "chula-wbc", r["path"]) for r in rng.sample(rows, a.n)]
        Image.fromarray(contact_sheet([overlay(r, 240) for r in refs])).save(out / "chula.jpg", quality=80)


if __name__ == "__main__":
    main()
