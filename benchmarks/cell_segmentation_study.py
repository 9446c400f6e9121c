"""The reference study's segmentation comparison, U-Net vs U-Net-FPN-GELU, rerun on the three-lab training data of
the two-output segmenter (issue 20): both on the ImageNet EfficientNet-Lite0 encoder, the same recipe and budget,
`--seeds` seeds each (seed-major), every run scored on ONE common held-out set through the analysis pipeline
(leukodx.evaluation.cells.score_parts: Raabin fields, PBC crops, Taleqani fields), then mean ± std over seeds and
a paired comparison over seeds (leukodx.evaluation.study).

    python benchmarks/cell_segmentation_study.py --seeds 3 --epochs 2 --samples-per-epoch 600 \
        --out docs/results/cell-segmentation-study [--runs /work/runs/cellseg-study]

Reduced CPU budget: each run sees `epochs x samples-per-epoch` training crops (the bundled model: 9 x 2400, up to
its time limit), so the numbers compare the two architectures at equal, small budgets, not the bundled model.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from leukodx.evaluation.cells import headline, load_parts, score_parts
from leukodx.evaluation.study import aggregate, markdown_table, paired_comparison, paired_table
from leukodx.inference.pipeline import Analysis
from leukodx.training.cell_segment import train_cell_segmenter
from leukodx.training.config import resolve_config

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {"unet": "unet:tf_efficientnet_lite0", "unet-fpn-gelu": "unet-fpn-gelu:tf_efficientnet_lite0"}
METRICS = ("objective", "raabin_one_centre", "raabin_count_exact", "raabin_cell_dice", "raabin_nucleus_dice",
           "pbc_exactly_one", "pbc_cell_dice", "taleqani_nucleus_dice")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples-per-epoch", type=int, default=600)
    ap.add_argument("--max-test", type=int, default=160, help="images per source in the common test set (0: all)")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/leukodx-cellseg-study"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    d = a.data
    parts = load_parts(d, ROOT / "benchmarks/splits", "test", a.max_test, a.max_test, a.max_test)
    runs: list[dict] = []
    t_all = time.perf_counter()
    for seed in range(a.seeds):
        for name, arch in ARCHS.items():
            out = a.runs / f"{name}-seed{seed}"
            t0 = time.perf_counter()
            cfg = resolve_config("cell_segment", overrides={
                "out": str(out), "data": str(d / "all-taleqani"), "splits": str(ROOT / "benchmarks/splits"),
                "raabin": str(d / "raabin-fields"), "pbc": str(d / "pbc"), "synthetic": 200, "arch": arch,
                "arch_kwargs": {"out_stride": 2, "freeze_stages": 3}, "pretrained": "efficientnet_lite0",
                "epochs": a.epochs, "samples_per_epoch": a.samples_per_epoch, "seed": seed, "max_val_images": 60,
                "cache_dir": str(a.cache_dir) if a.cache_dir else None, "quiet": True})
            train_cell_segmenter(cfg, log_fn=lambda _m: None)
            train_s = time.perf_counter() - t0
            run = {"arch": name, "seed": seed, "train_seconds": round(train_s, 1),
                   **headline(score_parts(Analysis(None, out, cell_classifier=False), parts))}
            runs.append(run)
            print(json.dumps(run), flush=True)
    rows = aggregate(runs, ("arch",), METRICS)
    paired = paired_comparison(runs, "arch", METRICS, levels=("unet-fpn-gelu", "unet"))
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"runs": runs, "summary": rows, "paired": paired, **parts.describe(),
           "budget": {"epochs": a.epochs, "samples_per_epoch": a.samples_per_epoch, "seeds": a.seeds},
           "wall_seconds": round(time.perf_counter() - t_all, 1),
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
           "command": f"python benchmarks/cell_segmentation_study.py --seeds {a.seeds} --epochs {a.epochs} "
                      f"--samples-per-epoch {a.samples_per_epoch} --max-test {a.max_test} --out {a.out}"}
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    table = markdown_table(rows, ("arch",), METRICS, percent=METRICS)
    if paired:
        table += "\n\n" + paired_table(paired, METRICS, percent=METRICS)
    (a.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
