"""Contact sheet of the repaired reference masks (issue 10): for a random sample of Pro fields, the original, the
HSV reference (grayscale(Segmented) > 128, yellow) and the repaired reference (leukodx.data.reference_masks,
green outline), side by side; plus the counts of how many references the rule rebuilt, per class.

    python benchmarks/reference_masks_sheet.py --data ../shared/data/all-taleqani \\
        --out docs/results/segmentation-references
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from leukodx.data.reference_masks import MIN_VALID_FRACTION, repaired_reference


def outline(rgb: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    out = rgb.copy()
    edge = mask & ~ndi.binary_erosion(mask)
    out[edge] = colour
    return out


def filled(rgb: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    out = rgb.copy()
    out[mask] = (0.4 * out[mask] + 0.6 * np.array(colour)).astype(np.uint8)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=12, help="Pro fields on the sheet.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    fractions: dict[str, list[float]] = {}
    for cls_dir in sorted((args.data / "Original").iterdir()):
        for f in sorted(cls_dir.glob("*.jpg")):
            seg = args.data / "Segmented" / cls_dir.name / f.name
            hsv = np.asarray(Image.open(seg).convert("L")) > 128
            valid = hsv.mean() >= MIN_VALID_FRACTION
            c = counts.setdefault(cls_dir.name, {"fields": 0, "hsv_kept": 0, "rebuilt": 0})
            c["fields"] += 1
            c["hsv_kept" if valid else "rebuilt"] += 1
            if not valid:
                rgb = np.asarray(Image.open(f).convert("RGB"))
                fractions.setdefault(cls_dir.name, []).append(float(repaired_reference(rgb, hsv)[0].mean()))
    pro = sorted((args.data / "Original" / "Pro").glob("*.jpg"))
    sample = random.Random(args.seed).sample(pro, min(args.n, len(pro)))
    rows = []
    for f in sample:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        hsv = np.asarray(Image.open(args.data / "Segmented" / "Pro" / f.name).convert("L")) > 128
        rep, source = repaired_reference(rgb, hsv)
        tiles = [rgb, filled(rgb, hsv, (255, 220, 0)), outline(filled(rgb, rep, (0, 200, 0)), rep, (0, 90, 0))]
        row = Image.fromarray(np.concatenate(tiles, axis=1))
        d = ImageDraw.Draw(row)
        d.text((4, 4), f.name, fill=(0, 0, 0))
        d.text((228, 4), f"HSV {100 * hsv.mean():.1f} %", fill=(0, 0, 0))
        d.text((452, 4), f"repaired ({source}) {100 * rep.mean():.1f} %", fill=(0, 0, 0))
        rows.append(np.asarray(row))
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).save(args.out / "pro_contact_sheet.png", optimize=True)
    summary = {"rule": "leukodx.data.reference_masks.repaired_reference", "min_valid_fraction": MIN_VALID_FRACTION,
               "per_class": counts, "rebuilt_foreground_median_pct": {
                   k: round(100 * float(np.median(v)), 2) for k, v in fractions.items()},
               "sheet": {"file": "pro_contact_sheet.png", "fields": [f.name for f in sample], "seed": args.seed,
                         "columns": ["original", "HSV reference (yellow)", "repaired reference (green)"]}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
