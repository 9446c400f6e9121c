"""The reference study's classification comparison: architectures x split strategies x seeds.

Every run is scored on ONE common, group-aware test set (make_split(..., common_test=True): the test part is drawn
first with test_seed alone, so SGDC and per-class splits of every seed share it); the split strategy and seed are
recorded per run; mean ± std over seeds of every metric; DIR/results.json, DIR/table.md and plots.
A run directory that already holds metrics.json is reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from leukodx.cpus import usable_cores
from leukodx.errors import LeukodxError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece")
PERCENT = ("accuracy", "balanced_accuracy", "macro_f1")
EXTRA = ("train_seconds", "epochs_run", "n_train")


def _run_row(arch, strategy, seed, run_dir: Path) -> dict:
    cfg = json.loads((run_dir / "config.json").read_text())
    test = json.loads((run_dir / "metrics.json").read_text())["classification"]
    tr = cfg["training"]
    return {
        "arch": arch, "strategy": strategy, "seed": seed, "run": run_dir.name,
        **{k: test.get(k) for k in METRICS},
        "n_test": test.get("n_images"),
        "n_train": sum(tr["counts"]["train"].values()), "n_val": sum(tr["counts"]["val"].values()),
        "train_counts": tr["counts"]["train"],
        "epochs_run": tr["epochs_run"], "best_epoch": tr["best_epoch"],
        "train_seconds": tr["train_seconds"], "wall_seconds": tr["wall_seconds"],
        "split_strategy": tr["split_strategy"], "split_seed": tr["split_seed"], "test_seed": tr["test_seed"],
        "temperature": cfg.get("temperature"), "confusion_matrix": test.get("confusion_matrix"),
    }


def run_classification_study(data: str | Path, archs: list[str], strategies: list[str], seeds: int | list[int],
                             out: str | Path, *, preset: str = "cpu", config_yaml=None, overrides: dict | None = None,
                             test_seed: int = 0, command: str = "", log=print) -> dict:
    from leukodx.config import resolve_config
    from leukodx.data.datasets import SplitInfo
    from leukodx.data.split import STRATEGIES, make_split
    from leukodx.evaluation.study import aggregate, bar_plot, markdown_table
    from leukodx.training.classify import build_classifier
    from leukodx.training.engine import TrainingInterrupted

    t0 = time.perf_counter()
    out = Path(out)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not archs:
        raise LeukodxError("No architectures given.", "Pass --archs A,B (e.g. inception_resnet_v2,nasnetalarge).")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise LeukodxError(f"Unknown split strategy {', '.join(bad)}.", f"Use: {', '.join(STRATEGIES)}.")
    if not seed_list:
        raise LeukodxError("--seeds must be at least 1.", "For example --seeds 3.")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    # fail early: every arch and the image size, before any hour of training
    for arch in archs:
        cfg = resolve_config("classify", preset, config_yaml, {**overrides, "arch": arch, "data": str(data)})
        build_classifier(cfg, 4)
    log(f"study: {len(archs)} arch(s) x {len(strategies)} strateg(ies) x {len(seed_list)} seed(s) = "
        f"{len(archs) * len(strategies) * len(seed_list)} runs -> {out}")

    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    splits: dict[tuple[str, int], dict] = {}
    common_test: set[str] | None = None
    for strategy in strategies:
        for seed in seed_list:
            rows, summary = make_split(data, strategy=strategy, seed=seed, common_test=True, test_seed=test_seed)
            test = {r["path"] for r in rows if r["split"] == "test"}
            if common_test is None:
                common_test = test
            elif test != common_test:  # make_split's contract; checked because every comparison rests on it
                raise LeukodxError("The common test set differs between splits.", "Report this as a bug.")
            split = SplitInfo(rows, {**{k: v for k, v in summary.items() if k != "counts"}, "split_file": None})
            counts = split.counts()
            splits[(strategy, seed)] = {"strategy": strategy, "seed": seed, "counts": counts}
            for arch in archs:
                name = f"{arch}-{strategy}-seed{seed}"
                run_dir = out / "runs" / name
                if (run_dir / "metrics.json").is_file() and (run_dir / "config.json").is_file():
                    log(f"[{name}] already done, reused")
                else:
                    cfg = resolve_config("classify", preset, config_yaml, {
                        **overrides, "arch": arch, "seed": seed, "split_strategy": strategy, "common_test": True,
                        "test_seed": test_seed, "data": str(data), "out": str(run_dir), "quiet": True})
                    log(f"[{name}] training on {sum(counts.get('train', {}).values())} train fields "
                        f"(max {cfg.max_train_images or 'all'}), {cfg.image_size} px, {cfg.epochs} epoch(s)...")
                    try:
                        from leukodx.training.classify import train_classifier

                        train_classifier(cfg, split=split, checkpoints=False, fit_ood=False)
                    except TrainingInterrupted:
                        raise LeukodxError(f"Study interrupted during {name}; finished runs are kept in {out}/runs.",
                                           "Run the same command again to continue with the remaining runs.") from None
                row = _run_row(arch, strategy, seed, run_dir)
                runs.append(row)
                log(f"[{name}] test accuracy {row['accuracy']:.4f}, macro F1 {row['macro_f1']:.4f}, "
                    f"ECE {row['ece']:.4f} ({row['n_test']} test fields, {row['train_seconds']:.0f} s training)")

    by = ("arch", "strategy")
    table_rows = aggregate(runs, by, METRICS + EXTRA)
    wall = time.perf_counter() - t0
    first = runs[0]
    settings = json.loads((out / "runs" / first["run"] / "config.json").read_text())["training"]["config"]
    results = {
        "command": command,
        "data": str(Path(data).resolve()),
        "archs": archs, "strategies": strategies, "seeds": seed_list, "preset": preset,
        "settings": {k: settings[k] for k in ("image_size", "epochs", "batch_size", "lr", "optimizer", "schedule",
                                              "augment", "balance", "label_smoothing", "normalization", "patience",
                                              "max_train_images", "max_val_images", "max_test_images", "pretrained",
                                              "device")},
        "common_test": {"test_seed": test_seed, "n_fields": len(common_test or ()),
                        "n_scored": first["n_test"],
                        "note": "One group-aware test set shared by every run (duplicate groups kept on one side); "
                                "split by field, not by patient (no patient IDs are published)."},
        "splits": list(splits.values()),
        "runs": runs,
        "summary": table_rows,
        "wall_seconds": round(wall, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": usable_cores(), "torch_threads": _threads()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    table = markdown_table(table_rows, by, METRICS + ("train_seconds",), percent=PERCENT,
                           headers={"arch": "architecture", "strategy": "split", "roc_auc_macro": "ROC AUC (macro)",
                                    "balanced_accuracy": "balanced acc.", "macro_f1": "macro F1",
                                    "train_seconds": "train s"})
    (out / "table.md").write_text(table + "\n")
    plots = {}
    for metric in ("accuracy", "macro_f1", "ece"):
        plots[metric] = str(bar_plot(table_rows, runs, by, metric, out / f"{metric}.png",
                                     title=f"test {metric}: mean ± std over seeds {seed_list}").name)
    results["plots"] = plots
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    log(table)
    log(f"study done in {wall:.0f} s: {out}/results.json, {out}/table.md, plots {', '.join(plots.values())}")
    return results


def _threads() -> int:
    import torch

    return torch.get_num_threads()
