"""PBC's red-cell diameter in pixels (`leukodx.data.sources.PBC_RBC_DIAMETER`): one camera, one magnification.

Per crop, the stained components (`cell_references.foreground`) that hold no nucleus (a nuclear-stain score over
max(NUCLEUS_FLOOR, its 90th percentile over stained pixels) on at most 5 % of them), are round and isolated
(solidity >= 0.9, eccentricity <= 0.6, area 0.3-3 times that of a disc of the current constant's diameter) and do
not touch the border; the median of their equivalent diameters where at least 3 such components exist; then the
median over the first `--per-class` crops of each class.

    python benchmarks/pbc_rbc_diameter.py --data ../shared/data/pbc [--per-class 20]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops

from leukodx.data.cell_references import NUCLEUS_FLOOR, foreground, optical_density
from leukodx.data.images import read_rgb
from leukodx.data.sources import PBC_RBC_DIAMETER, read_pbc


def rbc_diameter(rgb: np.ndarray, guess: float) -> float | None:
    """The median equivalent diameter of the image's round, isolated, nucleus-free components; None under 3."""
    od = optical_density(rgb)
    s = od[..., 1] - od[..., 2]
    fg = foreground(od, guess)
    nuc = s > max(NUCLEUS_FLOOR, float(np.percentile(s[fg], 90)) if fg.any() else 1.0)
    lab, _ = ndi.label(fg)
    a0 = np.pi * (guess / 2) ** 2
    h, w = fg.shape
    ds = []
    for p in regionprops(lab):
        y0, x0, y1, x1 = p.bbox
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w:
            continue
        if not 0.3 * a0 <= p.area <= 3 * a0 or p.solidity < 0.9 or p.eccentricity > 0.6:
            continue
        if nuc[lab == p.label].mean() > 0.05:
            continue
        ds.append(p.equivalent_diameter_area)
    return float(np.median(ds)) if len(ds) >= 3 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the PBC folder")
    ap.add_argument("--per-class", type=int, default=20)
    args = ap.parse_args()
    ds, taken = [], Counter[str]()
    for rel, c in read_pbc(args.data):
        taken[c] += 1
        if taken[c] <= args.per_class and (v := rbc_diameter(read_rgb(args.data / rel), PBC_RBC_DIAMETER)):
            ds.append(v)
    print(json.dumps({"rbc_diameter_px": float(np.median(ds)) if ds else None, "crops_measured": len(ds),
                      "crops_read": sum(min(n, args.per_class) for n in taken.values()),
                      "constant": PBC_RBC_DIAMETER}))


if __name__ == "__main__":
    main()
