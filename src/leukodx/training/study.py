"""The reference study's comparisons: classifiers (architectures x split strategies x seeds) and segmenters.

Every run is scored on one common, group-aware test set (make_split(..., common_test=True)), the way `leukodx
evaluate --shift lab --seed 0` scores it: through the analysis pipeline, on those fields as they are and
lab-shifted (metrics prefixed "lab_"). Mean ± std over seeds, paired t-tests between the levels of each
factor, reference models scored beside the runs: DIR/results.json, DIR/table.md and plots. The segmentation
comparison (`run_segmentation_study`) trains every (architecture, seed) with `train_segmenter` on sgdc splits
around the same kind of test set. A run directory that already holds metrics.json is reused, so an interrupted
study continues.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from leukodx.cpus import usable_cores
from leukodx.errors import LeukodxError
from leukodx.evaluation.study import aggregate, markdown_table
from leukodx.training.config import loss_flat

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece", "flag_rate")
SHIFTED = tuple(f"lab_{m}" for m in METRICS)
PERCENT = tuple(f"{prefix}{m}" for prefix in ("", "lab_") for m in ("accuracy", "balanced_accuracy", "macro_f1",
                                                                      "flag_rate"))
EXTRA = ("train_seconds", "epochs_run", "best_epoch", "n_train")
HEADERS = {"arch": "architecture", "strategy": "split", "roc_auc_macro": "ROC AUC (macro)",
           "balanced_accuracy": "balanced acc.", "macro_f1": "macro F1", "flag_rate": "flagged",
           "train_seconds": "train s", "lab_accuracy": "lab-shift accuracy",
           "lab_balanced_accuracy": "lab-shift balanced acc.", "lab_macro_f1": "lab-shift macro F1",
           "lab_roc_auc_macro": "lab-shift ROC AUC", "lab_ece": "lab-shift ece", "lab_flag_rate": "lab-shift flagged"}


def _common_split(data, strategy: str, seed: int, test_seed: int, seen: dict):
    """make_split(common_test=True) of one (strategy, seed) as a SplitInfo; its test part is checked against the
    first one drawn (`seen`): make_split's contract, checked because every comparison rests on it."""
    from leukodx.data.datasets import SplitInfo
    from leukodx.data.split import make_split

    rows, summary = make_split(data, strategy=strategy, seed=seed, common_test=True, test_seed=test_seed)
    test = {r["path"] for r in rows if r["split"] == "test"}
    if seen.setdefault("test", test) != test:
        raise LeukodxError("The common test set differs between splits.", "Report this as a bug.")
    return SplitInfo(rows, {**{k: v for k, v in summary.items() if k != "counts"}, "split_file": None})


def _done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "config.json").is_file()


def _machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": usable_cores(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def score_model(model_dir: Path, samples: list, cache: Path, *, engine: str = "torch", batch_size: int = 32) -> dict:
    """{"in_distribution": metrics, "lab_shifted": metrics, ...} of one model on `samples`, through the analysis
    pipeline (leukodx.evaluation.evaluate.evaluate_classifier), cached in `cache` (a JSON file)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from leukodx.evaluation.evaluate import _shift_fn, evaluate_classifier, load_models

    models, _ = load_models([model_dir], engine=engine)
    res = evaluate_classifier(models[0], samples, batch_size, _shift_fn("lab", 0, 1.0))
    keep = ("n_images", *METRICS, "confusion_matrix", "coverage", "flags", "accuracy_unflagged")
    scores = {"engine": engine, "model": str(model_dir), "n_fields": len(samples),
              "lab_shift": {"shift": "lab", "seed": 0, "severity": 1.0,
                            "same_as": "leukodx evaluate --shift lab --seed 0"},
              "in_distribution": {k: res["metrics"].get(k) for k in keep},
              "lab_shifted": {k: res["metrics_shift"].get(k) for k in keep}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(scores, indent=2, default=float))
    return scores


def _scored(row: dict, scores: dict) -> dict:
    for k in METRICS:
        row[k] = scores["in_distribution"].get(k)
        row[f"lab_{k}"] = scores["lab_shifted"].get(k)
    row["n_test"] = scores["in_distribution"].get("n_images")
    row["confusion_matrix"] = scores["in_distribution"].get("confusion_matrix")
    row["lab_confusion_matrix"] = scores["lab_shifted"].get("confusion_matrix")
    return row


def _run_row(arch, strategy, seed, run_dir: Path) -> dict:
    cfg = json.loads((run_dir / "config.json").read_text())
    test = json.loads((run_dir / "metrics.json").read_text())["classification"]
    tr = cfg["training"]
    hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else []
    return {
        "arch": arch, "strategy": strategy, "seed": seed, "run": run_dir.name,
        "trainer_test_accuracy": test.get("accuracy"), "trainer_test_balanced_accuracy": test.get("balanced_accuracy"),
        "n_train": sum(tr["counts"]["train"].values()), "n_val": sum(tr["counts"]["val"].values()),
        "train_counts": tr["counts"]["train"],
        "epochs_run": tr["epochs_run"], "best_epoch": tr["best_epoch"],
        "train_seconds": tr["train_seconds"], "wall_seconds": tr["wall_seconds"],
        "max_test_images": tr["subset"]["max_test_images"], "stopped_early": tr.get("stopped_early"),
        "stopped_by": tr.get("stopped_by") or ("early stopping" if tr.get("stopped_early") else "epochs"),
        "split_strategy": tr["split_strategy"], "split_seed": tr["split_seed"], "test_seed": tr["test_seed"],
        "temperature": cfg.get("temperature"),
        # converged: the validation loss was flat (no fall of more than 1 %) over the run's last 3 epochs
        "converged": loss_flat(hist, 3, 0.01), "val_loss_per_epoch": [round(h["val_loss"], 4) for h in hist],
    }


def run_classification_study(data: str | Path, archs: list[str], strategies: list[str], seeds: int | list[int],
                             out: str | Path, *, preset: str = "cpu", config_yaml=None, overrides: dict | None = None,
                             test_seed: int = 0, command: str = "", log=print,
                             reference_models: list[str | Path] | None = None) -> dict:
    from leukodx.data.datasets import samples_for_split, subset
    from leukodx.data.split import STRATEGIES
    from leukodx.evaluation.study import bar_plot, paired_comparison, paired_table
    from leukodx.models.model_config import read_model_config
    from leukodx.training.classify import build_classifier, train_classifier
    from leukodx.training.config import resolve_config
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
    overrides = overrides or {}

    # fail early: every reference model, every arch and the image size, before any hour of training
    for ref in reference_models or []:
        if read_model_config(ref).task != "classify":
            raise LeukodxError(f"--reference-model {ref} is not a classifier.",
                               "Give a classifier's model directory, e.g. src/leukodx/assets/classifier.")
    for arch in archs:
        cfg = resolve_config("classify", preset, config_yaml, {**overrides, "arch": arch, "data": str(data)})
        build_classifier(cfg, 4)
    log(f"study: {len(archs)} arch(s) x {len(strategies)} strateg(ies) x {len(seed_list)} seed(s) = "
        f"{len(archs) * len(strategies) * len(seed_list)} runs -> {out}")

    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    splits: dict[tuple[str, int], dict] = {}
    seen: dict = {}
    test_sets: dict[int | None, list] = {}
    # seed-major order: every arch x strategy cell gets its first seed before any gets a second, so a study cut
    # short (a per-run --time-limit-s, a lent GPU's budget) has the most informative runs done first
    for seed in seed_list:
        for strategy in strategies:
            split = _common_split(data, strategy, seed, test_seed, seen)
            counts = split.counts()
            splits[(strategy, seed)] = {"strategy": strategy, "seed": seed, "counts": counts}
            for arch in archs:
                name = f"{arch}-{strategy}-seed{seed}"
                run_dir = out / "runs" / name
                if _done(run_dir):
                    log(f"[{name}] already done, reused")
                else:
                    cfg = resolve_config("classify", preset, config_yaml, {
                        **overrides, "arch": arch, "seed": seed, "split_strategy": strategy, "common_test": True,
                        "test_seed": test_seed, "data": str(data), "out": str(run_dir), "quiet": True})
                    log(f"[{name}] training on {sum(counts.get('train', {}).values())} train fields "
                        f"(max {cfg.max_train_images or 'all'}), {cfg.image_size} px, {cfg.epochs} epoch(s)...")
                    try:
                        train_classifier(cfg, split=split, checkpoints=False, fit_ood=False)
                    except TrainingInterrupted:
                        raise LeukodxError(f"Study interrupted during {name}; finished runs are kept in {out}/runs.",
                                           "Run the same command again to continue with the remaining runs.") from None
                row = _run_row(arch, strategy, seed, run_dir)
                cap = row["max_test_images"]
                if cap not in test_sets:  # one common test set (checked above): drawn once per --max-test-images
                    test_sets[cap] = subset(samples_for_split(data, split, "test"), cap, 0)
                row = _scored(row, score_model(run_dir, test_sets[cap], run_dir / "scores.json"))
                runs.append(row)
                log(f"[{name}] test balanced accuracy {row['balanced_accuracy']:.4f} (lab shift "
                    f"{row['lab_balanced_accuracy']:.4f}), accuracy {row['accuracy']:.4f}, ECE {row['ece']:.4f} "
                    f"({row['n_test']} test fields, {row['train_seconds']:.0f} s training, best epoch "
                    f"{row['best_epoch']} of {row['epochs_run']}, stopped by {row['stopped_by']}, "
                    f"{'converged' if row['converged'] else 'NOT converged'})")

    common_test = seen.get("test", set())
    references = _score_references(reference_models or [], common_test, test_sets[runs[-1]["max_test_images"]], out,
                                   log)
    by = ("arch", "strategy")
    table_rows = aggregate(runs, by, METRICS + SHIFTED + EXTRA)
    comparisons = [c for c in (paired_comparison(runs, f, METRICS + SHIFTED) for f in ("strategy", "arch")) if c]
    wall = time.perf_counter() - t0
    first = runs[0]
    settings = json.loads((out / "runs" / first["run"] / "config.json").read_text())["training"]["config"]
    results = {
        "command": command,
        "data": str(Path(data).resolve()),
        "archs": archs, "strategies": strategies, "seeds": seed_list, "preset": preset,
        "settings": {k: settings[k] for k in ("image_size", "epochs", "batch_size", "lr", "optimizer", "schedule",
                                              "augment", "balance", "label_smoothing", "normalization", "patience", "converge_patience",
                                              "max_train_images", "max_val_images", "max_test_images", "pretrained",
                                              "device")},
        "common_test": {"test_seed": test_seed, "n_fields": len(common_test),
                        "n_scored": first["n_test"],
                        "note": "One group-aware test set shared by every run (duplicate groups kept on one side); "
                                "split by field, not by patient (no patient IDs are published)."},
        "splits": list(splits.values()),
        "runs": runs,
        "summary": table_rows,
        "paired": comparisons,
        "references": references,
        "wall_seconds": round(wall, 1),  # this invocation (reused runs cost nothing here)
        "runs_wall_seconds_sum": round(sum(r["wall_seconds"] or 0 for r in runs), 1),
        "runs_train_seconds_sum": round(sum(r["train_seconds"] or 0 for r in runs), 1),
        "machine": _machine(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    table = "\n\n".join([
        "In distribution (common test set):",
        markdown_table(table_rows, by, METRICS + ("train_seconds", "best_epoch"), percent=PERCENT,
                       headers={**HEADERS, "best_epoch": "best epoch"}),
        "Under lab shift (the same fields, `evaluate --shift lab --seed 0`):",
        markdown_table(table_rows, by, SHIFTED, percent=PERCENT, headers=HEADERS),
        *[f"Paired over seeds: {c['difference']} ({', '.join(c['paired_on'])} held equal):\n\n"
          + paired_table(c, ("balanced_accuracy", "accuracy", "macro_f1", "ece", "lab_balanced_accuracy",
                             "lab_accuracy"), PERCENT, HEADERS) for c in comparisons],
        *([_reference_table(references)] if references else [])])
    (out / "table.md").write_text(table + "\n")
    plots = {}
    for metric in ("balanced_accuracy", "lab_balanced_accuracy", "macro_f1", "ece"):
        plots[metric] = str(bar_plot(table_rows, runs, by, metric, out / f"{metric}.png",
                                     title=f"test {metric}\nmean ± std over seeds {seed_list}").name)
    results["plots"] = plots
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    log(table)
    log(f"study done in {wall:.0f} s: {out}/results.json, {out}/table.md, plots {', '.join(plots.values())}")
    return results


def _score_references(model_dirs: list, common_test: set[str], test_samples: list, out: Path, log) -> list:
    """Each reference model scored on the study's test fields like the runs; a note when its own training split
    put any of those fields in train or val (then its row is not a held-out score)."""
    from leukodx.data.split import read_split

    rows = []
    for d in model_dirs:
        d = Path(d)
        cfg = json.loads((d / "config.json").read_text())
        leaked = None
        if (d / "split.csv").is_file():
            seen = {r["path"] for r in read_split(d / "split.csv") if r["split"] in ("train", "val")}
            leaked = len(seen & common_test)
        name = cfg.get("name") or d.name
        engine = "onnx" if (d / "model.onnx").is_file() else "torch"
        scores = score_model(d, test_samples, out / "references" / f"{name}.json", engine=engine)
        row = _scored({"name": name, "model": str(d), "arch": cfg.get("arch"), "engine": engine,
                       "image_size": (cfg.get("input_size") or [None])[0],
                       "test_fields_in_its_train_or_val": leaked}, scores)
        rows.append(row)
        log(f"[reference {name}] test balanced accuracy {row['balanced_accuracy']:.4f} "
            f"(lab shift {row['lab_balanced_accuracy']:.4f}); its training split had {leaked} of the test fields")
    return rows


def _reference_table(references: list[dict]) -> str:
    lines = ["For reference, scored the same way (one model each, no seeds):", "",
             "| model | arch | px | engine | balanced acc. (%) | accuracy (%) | ECE | flagged (%) | lab-shift balanced acc. (%) "
             "| lab-shift accuracy (%) | test fields it trained on |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in references:
        lines.append(f"| {r['name']} | {r['arch']} | {r['image_size']} | {r['engine']} | "
                     f"{100 * r['balanced_accuracy']:.2f} | {100 * r['accuracy']:.2f} | {r['ece']:.3f} | "
                     f"{100 * r['flag_rate']:.2f} | {100 * r['lab_balanced_accuracy']:.2f} | "
                     f"{100 * r['lab_accuracy']:.2f} | {r['test_fields_in_its_train_or_val']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# segmentation

SEG_METRICS = ("dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy", "count_mae")
COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def _cells(records: list[dict], metrics) -> dict:
    """evaluation.study.aggregate of all `records` as one group: {metric: {mean, std, n, values}}."""
    row = aggregate(records or [{}], (), metrics)[0]
    return {m: row[m] for m in metrics}


def summarize_study(runs: list[dict], archs: list[str]) -> dict:
    """Per architecture: mean ± std (sample std over seeds) of every study metric, test and lab shift."""
    out = {}
    for arch in archs:
        rs = [r for r in runs if r["arch"] == arch]
        shifted = [r["test_lab_shift"] for r in rs if r.get("test_lab_shift")]
        out[arch] = {"n_runs": len(rs), "test": _cells([r["test"] for r in rs if r.get("test")], SEG_METRICS),
                     "test_lab_shift": _cells(shifted, SEG_METRICS) if shifted else {},
                     **_cells(rs, ("train_seconds", "epochs_run")),
                     "n_parameters": rs[0]["n_parameters"] if rs else None}
    return out


def study_table(summary: dict) -> str:
    """A markdown table (evaluation.study.markdown_table): one row per architecture, mean ± std over seeds."""
    shift = ("dice_global, lab shift",) if any(e["test_lab_shift"] for e in summary.values()) else ()
    rows = [{"architecture": arch, "params": f"{(e['n_parameters'] or 0) / 1e6:.2f} M", "n_runs": e["n_runs"],
             **e["test"], "dice_global, lab shift": e["test_lab_shift"].get("dice_global"),
             "train s": e["train_seconds"]} for arch, e in summary.items()]
    return markdown_table(rows, ("architecture", "params"), SEG_METRICS + shift + ("train s",),
                          percent=("pixel_accuracy",), headers={"pixel_accuracy": "pixel accuracy"},
                          digits={"count_mae": 2, "train s": 0, **dict.fromkeys(SEG_METRICS[:4] + shift, 4)}) + "\n"


def _study_plots(out: Path, runs: list[dict], summary: dict) -> list[str]:
    from leukodx.evaluation.report import _plt

    plt = _plt()
    files = []
    archs = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (m, label, k) in zip(axes, [("dice_global", "Dice (global)", 1), ("pixel_accuracy", "pixel accuracy %", 100),
                                       ("count_mae", "count MAE (cells/field)", 1)], strict=True):
        means = [(summary[a]["test"][m]["mean"] or 0) * k for a in archs]
        stds = [(summary[a]["test"][m]["std"] or 0) * k for a in archs]
        ax.bar(range(len(archs)), means, yerr=stds, capsize=4, color=COLOURS[: len(archs)])
        for i, a in enumerate(archs):
            vals = [v * k for v in summary[a]["test"][m]["values"]]
            ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(archs)), archs, fontsize=8)
        ax.set_title(label, fontsize=9)
        if m != "count_mae" and any(means):
            lo = min(v for a in archs for v in summary[a]["test"][m]["values"]) * k
            ax.set_ylim(max(0, lo - (k * 0.05)), None)
    fig.suptitle("test split, mean ± std over seeds (dots: single runs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    files.append("metrics.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    colours = dict(zip(archs, COLOURS, strict=False))
    for r in runs:
        hist = r.get("history") or []
        ax.plot([h["epoch"] for h in hist], [h.get("val_dice") for h in hist], color=colours.get(r["arch"], "k"),
                alpha=0.8, label=f"{r['arch']} seed {r['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "val_dice.png", dpi=110)
    plt.close(fig)
    files.append("val_dice.png")
    return files


def run_segmentation_study(data, archs: list[str], seeds: int, out, *, base_flags: dict, evaluate_shift: bool = False,
                           log_fn=None, test_seed: int = 0, config=None) -> dict:
    """Train every (arch, seed) around one common group-aware test set, each seed its own train/val split;
    DIR/results.json, DIR/table.md, plots. `base_flags`: resolve_segment_config's flags for every run, over the
    YAML recipe `config` when given; `archs` override its arch."""
    from leukodx.data.layout import load_dataset
    from leukodx.training.segment import require_masks, resolve_segment_config, summary_line, train_segmenter

    log = log_fn or (lambda m: print(m, flush=True))
    if not archs:
        raise LeukodxError("No architectures given.", "Pass e.g. --archs unet,unet-fpn-gelu.")
    if seeds < 1:
        raise LeukodxError(f"--seeds {seeds} is not a positive number.", "Pass e.g. --seeds 3.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    require_masks(load_dataset(data), data)
    t0 = time.perf_counter()
    settings = {**base_flags, "config": str(config) if config else None}
    if config:
        settings["config_contents"] = Path(config).read_text()
    runs: list[dict] = []
    seen: dict = {}
    for seed in range(seeds):
        split = _common_split(data, "sgdc", seed, test_seed, seen)
        for arch in archs:
            name = f"{arch.replace(':', '-')}-seed{seed}"
            run_dir = out / "runs" / name
            if _done(run_dir):
                cfgj = json.loads((run_dir / "config.json").read_text())
                mj = json.loads((run_dir / "metrics.json").read_text())
                hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else []
                log(f"[{name}] already done, read back")
                runs.append(_seg_run_record(arch, seed, run_dir, cfgj, mj, hist))
                continue
            cfg = resolve_segment_config(config, **{**base_flags, "data": str(data), "out": str(run_dir), "arch": arch,
                                                 "seed": seed, "quiet": True})
            log(f"[{name}] training ({cfg.epochs} epochs max, {cfg.image_size} px, {cfg.arch_kwargs})")
            res = train_segmenter(cfg, split=split, log_fn=lambda m, n=name: log(f"[{n}] {m}"),
                                  checkpoints=False, evaluate_shift=evaluate_shift)
            runs.append(_seg_run_record(arch, seed, run_dir, res["config"], res["metrics"], res["history"]))
            if res.get("test_metrics"):
                log(f"[{name}] {res['train_seconds']:.0f} s training, {res['wall_seconds']:.0f} s in all; "
                    + summary_line("test", res["test_metrics"]))
            _write_study(out, data, archs, seeds, runs, settings, time.perf_counter() - t0, seen.get("test"))
    result = _write_study(out, data, archs, seeds, runs, settings, time.perf_counter() - t0, seen.get("test"))
    result["plots"] = _study_plots(out, runs, result["summary"])
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _seg_run_record(arch, seed, run_dir, config, metrics, history) -> dict:
    seg = metrics.get("segmentation") or {}
    shift = metrics.get("segmentation_lab_shift")
    tr = config.get("training", {})
    from leukodx.training.segment import brief

    return {"arch": arch, "seed": seed, "dir": str(run_dir), "test": brief(seg),
            "test_lab_shift": brief(shift) if shift else None, "train_seconds": tr.get("train_seconds"),
            "wall_seconds": tr.get("wall_seconds"), "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"),
            "val_dice": (config.get("metrics") or {}).get("val_dice"), "n_parameters": config.get("n_parameters"),
            "arch_kwargs": config.get("arch_kwargs"), "masks": tr.get("masks"),
            "history": [{"epoch": h["epoch"], "val_dice": h.get("val_dice"), "train_loss": h.get("train_loss")}
                        for h in history]}


def _write_study(out: Path, data, archs, seeds, runs, base_flags, seconds, test_paths) -> dict:
    summary = summarize_study(runs, archs)
    result = {
        "study": "segmentation: U-Net vs U-Net-FPN-GELU",
        "data": str(Path(data).resolve()),
        "archs": archs,
        "seeds": seeds,
        "settings": base_flags,
        "split": "sgdc, one common group-aware test set (test_seed 0) for every run; train/val redrawn per seed; "
                 "by field and duplicate group, not by patient (no patient IDs are published)",
        "n_test_fields": len(test_paths or []),
        "summary": summary,
        "runs": runs,
        "wall_seconds": round(seconds, 1),
        "machine": _machine(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "table.md").write_text(study_table(summary))
    return result
