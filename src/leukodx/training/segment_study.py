"""The reference study's segmentation comparison: U-Net vs U-Net-FPN-GELU, seeds, one common test set.

Every (architecture, seed) is trained with `train_segmenter` and scored on one common, group-aware test set
(make_split(common_test=True)); mean ± std over seeds; DIR/results.json, DIR/table.md and plots. Runs already
finished in DIR/runs/ are read back, not retrained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from leukodx.evaluation.study import aggregate, markdown_table
from leukodx.training.segment import _summary_line, brief, require_masks, train_segmenter

# the preset's base channels when --base-channels is not given: small on CPU, the study's 64 for --preset paper
BASE_CHANNELS = {"cpu": 16, "paper": 64}


def segment_overrides(**kw) -> dict:
    """Flag values -> TrainConfig overrides (None = not given); --base-channels/--encoder go to arch_kwargs."""
    base, encoder, depth = kw.pop("base_channels"), kw.pop("encoder"), kw.pop("depth")
    arch_kwargs = {}
    if base is not None:
        arch_kwargs["base_channels"] = base
    if depth is not None:
        arch_kwargs["depth"] = depth
    if encoder:
        arch_kwargs["encoder"] = encoder
    kw["arch_kwargs"] = arch_kwargs or None
    return kw


def resolve_segment_config(yaml_path=None, **flags):
    """resolve_config("segment", ...) with the preset's base channels filled in when none were given."""
    from leukodx.training.config import resolve_config

    overrides = segment_overrides(**flags)
    cfg = resolve_config("segment", yaml_path=yaml_path, overrides=overrides)
    if "base_channels" not in cfg.arch_kwargs and "encoder" not in cfg.arch_kwargs and ":" not in cfg.arch:
        cfg.arch_kwargs = {**cfg.arch_kwargs, "base_channels": BASE_CHANNELS.get(cfg.preset, 16)}
    return cfg


STUDY_METRICS = ("dice_global", "dice_global_all", "dice_mean", "iou_global", "pixel_accuracy", "count_mae")


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
        out[arch] = {"n_runs": len(rs), "test": _cells([r["test"] for r in rs if r.get("test")], STUDY_METRICS),
                     "test_lab_shift": _cells(shifted, STUDY_METRICS) if shifted else {},
                     **_cells(rs, ("train_seconds", "epochs_run")),
                     "n_parameters": rs[0]["n_parameters"] if rs else None}
    return out


def study_table(summary: dict) -> str:
    """A markdown table (evaluation.study.markdown_table): one row per architecture, mean ± std over seeds."""
    shift = ("dice_global, lab shift",) if any(e["test_lab_shift"] for e in summary.values()) else ()
    rows = [{"architecture": arch, "params": f"{(e['n_parameters'] or 0) / 1e6:.2f} M", "n_runs": e["n_runs"],
             **e["test"], "dice_global, lab shift": e["test_lab_shift"].get("dice_global"),
             "train s": e["train_seconds"]} for arch, e in summary.items()]
    return markdown_table(rows, ("architecture", "params"), STUDY_METRICS + shift + ("train s",),
                          percent=("pixel_accuracy",), headers={"pixel_accuracy": "pixel accuracy"},
                          digits={"count_mae": 2, "train s": 0, **dict.fromkeys(STUDY_METRICS[:4] + shift, 4)}) + "\n"


def _study_plots(out: Path, runs: list[dict], summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    archs = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (m, label, k) in zip(axes, [("dice_global", "Dice (global)", 1), ("pixel_accuracy", "pixel accuracy %", 100),
                                       ("count_mae", "count MAE (cells/field)", 1)], strict=True):
        means = [(summary[a]["test"][m]["mean"] or 0) * k for a in archs]
        stds = [(summary[a]["test"][m]["std"] or 0) * k for a in archs]
        ax.bar(range(len(archs)), means, yerr=stds, capsize=4, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][
            : len(archs)])
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
    colours = {a: c for a, c in zip(archs, ["#4c72b0", "#dd8452", "#55a868", "#c44e52"], strict=False)}
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
    """Train every (arch, seed) on one common group-aware test set; DIR/results.json, DIR/table.md, plots.

    `base_flags` are train-segment settings (as for resolve_segment_config) shared by every run, over the YAML
    file `config` (a recipe such as benchmarks/configs/segment-lite0-unet.yaml) when given; `archs` override its
    arch. Each seed draws its
    own train/val split of the remaining fields (make_split(common_test=True)). Runs already finished in
    DIR/runs/ (their metrics.json exists) are read back, not retrained.
    """
    from leukodx.data.datasets import SplitInfo
    from leukodx.data.split import make_split
    from leukodx.errors import LeukodxError

    log = log_fn or (lambda m: print(m, flush=True))
    if not archs:
        raise LeukodxError("No architectures given.", "Pass e.g. --archs unet,unet-fpn-gelu.")
    if seeds < 1:
        raise LeukodxError(f"--seeds {seeds} is not a positive number.", "Pass e.g. --seeds 3.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from leukodx.data.layout import load_dataset

    require_masks(load_dataset(data), data)
    t0 = time.perf_counter()
    settings = {**base_flags, "config": str(config) if config else None}
    if config:
        settings["config_contents"] = Path(config).read_text()
    runs: list[dict] = []
    test_paths = None
    for seed in range(seeds):
        rows, summary = make_split(data, strategy="sgdc", seed=seed, common_test=True, test_seed=test_seed)
        summary = {k: v for k, v in summary.items() if k != "counts"}
        summary["split_file"] = None
        tp = sorted(r["path"] for r in rows if r["split"] == "test")
        if test_paths is None:
            test_paths = tp
        elif tp != test_paths:  # make_split(common_test=True) guarantees it; check anyway
            raise LeukodxError("The seeds' test sets differ.", "Report this as a bug.")
        for arch in archs:
            name = f"{arch.replace(':', '-')}-seed{seed}"
            run_dir = out / "runs" / name
            if (run_dir / "metrics.json").is_file() and (run_dir / "config.json").is_file():
                cfgj = json.loads((run_dir / "config.json").read_text())
                mj = json.loads((run_dir / "metrics.json").read_text())
                hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else []
                log(f"[{name}] already done, read back")
                runs.append(_run_record(arch, seed, run_dir, cfgj, mj, hist))
                continue
            cfg = resolve_segment_config(config, **{**base_flags, "data": str(data), "out": str(run_dir), "arch": arch,
                                                 "seed": seed, "quiet": True})
            log(f"[{name}] training ({cfg.epochs} epochs max, {cfg.image_size} px, {cfg.arch_kwargs})")
            res = train_segmenter(cfg, split=SplitInfo(rows, summary), log_fn=lambda m, n=name: log(f"[{n}] {m}"),
                                  checkpoints=False, evaluate_shift=evaluate_shift)
            runs.append(_run_record(arch, seed, run_dir, res["config"], res["metrics"], res["history"]))
            if res.get("test_metrics"):
                log(f"[{name}] {res['train_seconds']:.0f} s training, {res['wall_seconds']:.0f} s in all; "
                    + _summary_line("test", res["test_metrics"]))
            _write_study(out, data, archs, seeds, runs, settings, time.perf_counter() - t0, test_paths)
    result = _write_study(out, data, archs, seeds, runs, settings, time.perf_counter() - t0, test_paths)
    result["plots"] = _study_plots(out, runs, result["summary"])
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _run_record(arch, seed, run_dir, config, metrics, history) -> dict:
    seg = metrics.get("segmentation") or {}
    shift = metrics.get("segmentation_lab_shift")
    tr = config.get("training", {})
    return {"arch": arch, "seed": seed, "dir": str(run_dir), "test": brief(seg),
            "test_lab_shift": brief(shift) if shift else None, "train_seconds": tr.get("train_seconds"),
            "wall_seconds": tr.get("wall_seconds"), "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"),
            "val_dice": (config.get("metrics") or {}).get("val_dice"), "n_parameters": config.get("n_parameters"),
            "arch_kwargs": config.get("arch_kwargs"), "masks": tr.get("masks"),
            "history": [{"epoch": h["epoch"], "val_dice": h.get("val_dice"), "train_loss": h.get("train_loss")}
                        for h in history]}


def _write_study(out: Path, data, archs, seeds, runs, base_flags, seconds, test_paths) -> dict:
    import platform

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
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "table.md").write_text(study_table(summary))
    return result
