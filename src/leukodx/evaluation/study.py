"""Shared helpers of the study commands: mean +- std over seeds, a markdown table, plots.

    rows = aggregate(runs, by=("arch", "strategy"), metrics=("accuracy", "macro_f1"))
    print(markdown_table(rows, by=("arch", "strategy"), metrics=("accuracy", "macro_f1")))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std (ddof=1; 0 for one value), n) over the values that are numbers."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s, len(v)


def aggregate(runs: list[dict], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """One row per combination of the `by` keys (in first-seen order): {key: value, metric: {mean, std, n}}."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict = dict(zip(by, key, strict=True))
        row["n_runs"] = len(members)
        row["seeds"] = sorted({m.get("seed") for m in members if m.get("seed") is not None})
        for name in metrics:
            m, s, n = mean_std([r.get(name) for r in members])
            row[name] = {"mean": m, "std": s, "n": n}
        rows.append(row)
    return rows


def fmt(cell: dict, scale: float = 1.0, digits: int = 2) -> str:
    if cell is None or cell.get("mean") is None:
        return "n/a"
    return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"


def markdown_table(rows: list[dict], by: Sequence[str], metrics: Sequence[str], percent: Sequence[str] = (),
                   headers: dict[str, str] | None = None) -> str:
    """A markdown table: the `by` columns, then mean ± std of each metric (x100 for those in `percent`)."""
    headers = headers or {}
    cols = [headers.get(k, k) for k in by] + ["runs"] + [
        headers.get(m, m) + (" (%)" if m in percent else "") for m in metrics]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [str(r[k]) for k in by] + [str(r["n_runs"])]
        cells += [fmt(r[m], 100.0 if m in percent else 1.0, 2 if m in percent else 3) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(rows: list[dict], runs: list[dict], by: Sequence[str], metric: str, path: str | Path,
             title: str = "", ylabel: str | None = None) -> Path:
    """Bars of mean ± std of `metric` per group, each run's value as a dot; PNG via matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(str(r[k]) for k in by) for r in rows]
    means = [r[metric]["mean"] if r[metric]["mean"] is not None else 0.0 for r in rows]
    stds = [r[metric]["std"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(rows) + 1), 3.6), dpi=120)
    xs = range(len(rows))
    ax.bar(xs, means, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="#35608f")
    for i, r in enumerate(rows):
        key = tuple(r[k] for k in by)
        found = [run.get(metric) for run in runs if tuple(run.get(k) for k in by) == key]
        vals = [v for v in found if v is not None]
        ax.scatter([i] * len(vals), vals, color="#1d3557", s=14, zorder=3)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
