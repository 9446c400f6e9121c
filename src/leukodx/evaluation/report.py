"""Plots (matplotlib, Agg backend, written as PNG) and the self-contained HTML report of `leukodx evaluate`.

The report embeds every image as base64, so `report.html` can be mailed or archived alone; the PNG files are
written beside it as well (DIR/plots/).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

SPLIT_NOTE = ("Splits are by field and duplicate group, not by patient: the Taleqani data publishes no patient "
              "IDs, so fields of one patient may sit on both sides of a split.")
DECISION_NOTE = "Decision support only: a clinician reviews every result."


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _pictures(nrow: int, ncol: int, figsize: tuple[float, float]):
    """A figure of nrow x ncol axes for pictures (no axis lines or ticks)."""
    fig, axes = _plt().subplots(nrow, ncol, figsize=figsize, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def plot_confusion(cm, classes, path: Path, title: str = "Confusion matrix") -> Path:
    """Counts, shaded by the share of each true class (rows true, columns predicted)."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.1 * n + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), classes, rotation=30)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def plot_roc(curves: dict, path: Path, title: str = "ROC curves (one vs rest)") -> Path:
    """`curves`: {class: (fpr, tpr, auc)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (fpr, tpr, a) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {a:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=title)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "not defined:\na class has no images", ha="center", va="center")
    return _save(fig, path)


def plot_reliability(bins: dict, path: Path, ece: float | None = None, title: str = "Reliability diagram") -> Path:
    """Accuracy vs mean confidence per bin, with the share of images per bin underneath."""
    plt = _plt()
    edges = np.asarray(bins["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array(bins["accuracy"], dtype=float)  # None (an empty bin) -> NaN
    conf = np.array(bins["confidence"], dtype=float)
    count = np.asarray(bins["count"], dtype=float)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.8, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = count > 0
    ax.bar(centres[ok], acc[ok], width=width * 0.95, color="#4c78a8", edgecolor="white", label="accuracy")
    ax.bar(centres[ok], conf[ok] - acc[ok], bottom=acc[ok], width=width * 0.95, color="#e45756", alpha=0.35,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(ylim=(0, 1), ylabel="accuracy", title=title + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(centres, count / max(count.sum(), 1), width=width * 0.95, color="#72b7b2")
    ax2.set(xlabel="confidence (max probability)", ylabel="share", xlim=(0, 1))
    return _save(fig, path)


def plot_risk_coverage(curves: dict[str, dict], path: Path, title: str = "Risk-coverage") -> Path:
    """Error rate of the most confident share of fields against that share, one line per condition; the
    operating point of the flags (coverage, error of the unflagged fields) is marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for (label, m), colour in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green"), strict=False):
        pts = m.get("risk_coverage") or []
        ax.plot([q["coverage"] for q in pts], [q["risk"] for q in pts], color=colour, label=label)
        if m.get("coverage") and m.get("accuracy_unflagged") is not None:
            ax.plot([m["coverage"]], [1 - m["accuracy_unflagged"]], "o", color=colour)
    ax.set(xlabel="coverage (share of fields kept, most confident first)", ylabel="risk (error rate)", title=title,
           xlim=(0, 1.02), ylim=(0, None))
    ax.legend(fontsize=8, title="dot: the flags' operating point", title_fontsize=7)
    return _save(fig, path)


def plot_dice_histogram(series: dict[str, list[float]], path: Path, title: str = "Dice per field") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    bins = np.linspace(0, 1, 26)
    for name, values in series.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set(xlabel="Dice (fields whose reference has >= 0.1 % foreground)", ylabel="fields", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_shift_examples(pairs: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """`pairs`: [(title, original, shifted), ...] shown as two rows."""
    n = max(len(pairs), 1)
    fig, axes = _pictures(2, n, (2.6 * n, 5.4))
    for k, (title, a, b) in enumerate(pairs):
        axes[0][k].imshow(a)
        axes[0][k].set_title(title, fontsize=8)
        axes[1][k].imshow(b)
    axes[0][0].text(-0.05, 0.5, "original", transform=axes[0][0].transAxes, rotation=90, va="center", ha="right")
    axes[1][0].text(-0.05, 0.5, "lab-shifted", transform=axes[1][0].transAxes, rotation=90, va="center", ha="right")
    return _save(fig, path)


def plot_fields(items: list[tuple[str, np.ndarray]], path: Path, ncol: int = 6) -> Path:
    """A row (or rows) of captioned fields."""
    ncol = max(1, min(ncol, len(items)))
    nrow = max(1, -(-len(items) // ncol))
    fig, axes = _pictures(nrow, ncol, (2.6 * ncol, 2.9 * nrow))
    for ax, (caption, rgb) in zip(axes.ravel(), items, strict=False):
        ax.imshow(rgb)
        ax.set_title(caption, fontsize=7)
    return _save(fig, path)


def overlay(rgb: np.ndarray, pred: np.ndarray, ref: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Agreement colours: both (green), predicted only (red), reference only (blue)."""
    out = rgb.astype(np.float32).copy()
    for sel, colour in ((pred & ref, (40, 200, 60)), (pred & ~ref, (230, 40, 40)), (~pred & ref, (40, 90, 240))):
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def plot_overlays(rows: list[tuple[str, list[dict]]], path: Path) -> Path:
    """`rows`: [(row title, [{"rgb", "pred", "ref", "title"}, ...]), ...], one row per group (best, worst)."""
    ncol = max((len(items) for _, items in rows), default=1) or 1
    fig, axes = _pictures(len(rows), ncol, (3.0 * ncol, 3.3 * len(rows)))
    for r, (row_title, items) in enumerate(rows):
        for ax, it in zip(axes[r], items, strict=False):
            ax.imshow(overlay(it["rgb"], it["pred"], it["ref"]))
            ax.set_title(f"{row_title}, {it['title']}", fontsize=7)
    fig.suptitle("green: both   red: predicted only   blue: reference only", fontsize=9)
    return _save(fig, path)


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):  # bool too
        return str(v)
    if isinstance(v, float):
        return f"{v:.2%}" if pct else f"{v:.4f}"
    return html.escape(str(v))


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


CLASSIFICATION_ROWS = [("n_images", "fields", False), ("accuracy", "accuracy", True),
                       ("balanced_accuracy", "balanced accuracy", True), ("macro_f1", "macro F1", False),
                       ("roc_auc_macro", "ROC AUC (macro, one vs rest)", False), ("ece", "ECE (15 bins)", False),
                       ("nll", "negative log-likelihood", False), ("brier", "Brier score", False),
                       ("coverage", "coverage (fields not flagged)", True),
                       ("accuracy_unflagged", "accuracy, unflagged fields", True),
                       ("accuracy_flagged", "accuracy, flagged fields", True)]
SEGMENTATION_ROWS = [("n_images", "fields with a reference mask", False),
                     ("n_reference_failed", "reference failed (< 0.1 % foreground)", False),
                     ("dice_global", "Dice, global (reference >= 0.1 %)", False),
                     ("dice_global_all", "Dice, global (every field)", False),
                     ("dice_mean", "Dice, mean per field", False), ("iou_global", "IoU, global", False),
                     ("pixel_accuracy", "pixel accuracy", True), ("count_mae", "cell count MAE (cells/field)", False)]


def _metric_table(sections: list[tuple[str, dict | None]], rows) -> str:
    body = [[html.escape(label)] + [_fmt((m or {}).get(key), pct) for _, m in sections] for key, label, pct in rows]
    return _table(["metric"] + [name for name, _ in sections], body)


def _per_class_table(m: dict) -> str:
    keys = ("precision", "recall", "specificity", "f1", "roc_auc", "support")
    rows = [[html.escape(name)] + [_fmt(pc.get(k)) for k in keys] for name, pc in m.get("per_class", {}).items()]
    return _table(["class", "precision", "recall", "specificity", "F1", "ROC AUC", "support"], rows)


def _mal_line(m: dict | None) -> str:
    mb = (m or {}).get("malignant_vs_benign")
    if not mb:
        return ""
    return (f"<p>Malignant (any ALL subtype) vs benign: sensitivity {_fmt(mb['sensitivity'], True)}, "
            f"specificity {_fmt(mb['specificity'], True)}, AUC {_fmt(mb['roc_auc'])}.</p>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
figure{display:inline-block;margin:.4rem;vertical-align:top}figure img{max-width:520px;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem}
.skip{color:#a33}code{background:#f5f5f5;padding:0 .2rem}
"""


def write_report(metrics: dict, out_dir: Path, figures: dict[str, dict[str, Path]]) -> Path:
    """Write out_dir/report.html. `figures`: {section key: {figure name: PNG path}}."""
    out_dir = Path(out_dir)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>leukodx evaluation</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>leukodx evaluation</h1>",
             f"<p class='note'>{html.escape(SPLIT_NOTE)} {html.escape(DECISION_NOTE)}</p>"]
    split = metrics.get("split") or {}
    info = [["data", _fmt(metrics.get("data"))],
            ["images", _fmt(split.get("description"))],
            ["evaluated at", _fmt(metrics.get("created"))],
            ["leukodx", _fmt(metrics.get("leukodx_version"))]]
    if metrics.get("lab_shift"):
        ls = metrics["lab_shift"]
        info.append(["lab shift", f"severity {ls.get('severity')}, seed {ls.get('seed')}"])
    parts.append(_table(None, info))
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in metrics.get("notes", [])]

    shift = "lab_shift" in metrics
    for key, rows, title in (("classification", CLASSIFICATION_ROWS, "Classification"),
                             ("segmentation", SEGMENTATION_ROWS, "Segmentation")):
        models = metrics.get(f"{key}_models") or ({"": metrics[key]} if key in metrics else {})
        shifted_models = metrics.get(f"{key}_lab_shift_models") or (
            {"": metrics[f"{key}_lab_shift"]} if f"{key}_lab_shift" in metrics else {})
        for name, m in models.items():
            heading = title + (f" — {name}" if name else (f" — {m.get('model_name')}" if m.get("model_name") else ""))
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            if m.get("skipped"):
                parts.append(f"<p class='skip'>Skipped: {html.escape(m['skipped'])}</p>")
                continue
            parts.append(f"<p>Model directory: <code>{html.escape(str(m.get('model', '')))}</code></p>")
            sections = [("in distribution", m)]
            sm = shifted_models.get(name)
            if shift and sm is not None:
                sections.append(("lab-shifted", sm))
            if key == "segmentation":  # the study's references, then the repaired ones
                sections = [(f"{label}, HSV references", s) for label, s in sections] + [
                    (f"{label}, repaired references", s.get("repaired_references")) for label, s in sections
                    if s.get("repaired_references")]
            parts.append(_metric_table(sections, rows))
            for extra in ("missing_masks_note", "count_note", "roc_auc_note", "unreadable_note", "mask_size_note"):
                if m.get(extra):
                    parts.append(f"<p class='note'>{html.escape(str(m[extra]))}</p>")
            if key == "classification":
                parts.append(_mal_line(m))
                parts.append("<h3>Per class (in distribution)</h3>" + _per_class_table(m))
                if sm is not None:
                    parts.append(_mal_line(sm).replace("<p>", "<p>Lab-shifted: ", 1))
                    parts.append("<h3>Per class (lab-shifted)</h3>" + _per_class_table(sm))
            figs = figures.get(f"{key}:{name or m.get('model_name', '')}", {})
            parts.append("".join(_img(p, alt) for alt, p in figs.items()))

    if shift:
        d = metrics["lab_shift"]
        shift_rows = [[html.escape(k), html.escape(str(v))] for k, v in d.items() if k != "name"]
        parts.append("<h2>Synthetic lab-to-lab shift</h2><p>Each field is re-evaluated after one random variation "
                     "(drawn per field from the seed and the field's path) of stain, white balance, "
                     "brightness/contrast, focus, JPEG compression and magnification. This is a stress test of "
                     "colour and acquisition shortcuts, not a replacement for smears from a real second lab.</p>"
                     + _table(["part", "range"], shift_rows))
        parts.append(_img(figures.get("lab_shift", {}).get("examples"), "fields before (top) and after (bottom) "
                          "the lab shift"))
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    return path
