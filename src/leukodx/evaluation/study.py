"""Shared helpers of the study commands: mean +- std over seeds, a markdown table, plots.

    rows = aggregate(runs, by=("arch", "strategy"), metrics=("accuracy", "macro_f1"))
    print(markdown_table(rows, by=("arch", "strategy"), metrics=("accuracy", "macro_f1")))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path


def numbers(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers (not None, not NaN), as floats."""
    return [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std (ddof=1; 0 for one value), n) over the values that are numbers."""
    v = numbers(values)
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s, len(v)


def aggregate(runs: list[dict], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """One row per combination of the `by` keys (first-seen order; none: one row): {key, metric: {mean, std, n, values}}."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict = dict(zip(by, key, strict=True))
        row["n_runs"] = len(members)
        row["seeds"] = sorted({m.get("seed") for m in members if m.get("seed") is not None})
        for name in metrics:
            values = numbers(r.get(name) for r in members)
            m, s, n = mean_std(values)
            row[name] = {"mean": m, "std": s, "n": n, "values": values}
        rows.append(row)
    return rows


def fmt(cell: dict, scale: float = 1.0, digits: int = 2) -> str:
    if cell is None or cell.get("mean") is None:
        return "n/a"
    return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"


def markdown_table(rows: list[dict], by: Sequence[str], metrics: Sequence[str], percent: Sequence[str] = (),
                   headers: dict[str, str] | None = None, digits: dict[str, int] | None = None) -> str:
    """A markdown table: the `by` columns, then mean ± std of each metric (x100 for those in `percent`), with
    `digits` decimals (default 2 for percentages, else 3)."""
    headers, digits = headers or {}, digits or {}
    cols = [headers.get(k, k) for k in by] + ["runs"] + [
        headers.get(m, m) + (" (%)" if m in percent else "") for m in metrics]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [str(r[k]) for k in by] + [str(r["n_runs"])]
        cells += [fmt(r[m], 100.0 if m in percent else 1.0, digits.get(m, 2 if m in percent else 3)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(rows: list[dict], runs: list[dict], by: Sequence[str], metric: str, path: str | Path,
             title: str = "", ylabel: str | None = None) -> Path:
    """Bars of mean ± std of `metric` per group, each run's value as a dot; PNG via matplotlib (Agg)."""
    from leukodx.evaluation.report import _plt

    plt = _plt()
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


def paired_comparison(runs: list[dict], factor: str, metrics: Sequence[str], levels: Sequence[str] | None = None,
                      alpha: float = 0.05) -> dict | None:
    """Level A minus level B of `factor` (e.g. "strategy": sgdc - per-class), paired on every other key of the
    runs that matter (arch, strategy, seed minus `factor`): per-pair differences, their mean and std, and a
    two-sided paired t-test over the pairs. "beyond_seed_noise" is p < alpha; with 3 pairs the test needs a mean
    difference about 4.3 standard errors from zero, so a small real difference can still read as noise.
    None when the factor has fewer than two levels."""
    from scipy import stats

    keys = [k for k in ("arch", "strategy", "seed") if k != factor]
    found = list(dict.fromkeys(r[factor] for r in runs))
    levels = list(levels or found[:2])
    if len(levels) < 2 or len(found) < 2:
        return None
    a_level, b_level = levels[0], levels[1]
    by_key = {(r[factor], tuple(r.get(k) for k in keys)): r for r in runs}
    pairs = [(by_key[(a_level, k)], by_key[(b_level, k)]) for (lvl, k) in by_key if lvl == a_level
             and (b_level, k) in by_key]
    out: dict = {"factor": factor, "a": a_level, "b": b_level, "difference": f"{a_level} - {b_level}",
                 "paired_on": keys, "n_pairs": len(pairs), "alpha": alpha,
                 "pairs": [{k: pa.get(k) for k in keys} for pa, _ in pairs], "metrics": {}}
    for name in metrics:
        d = [float(pa[name]) - float(pb[name]) for pa, pb in pairs
             if pa.get(name) is not None and pb.get(name) is not None]
        m, s, n = mean_std(d)
        p = None
        if n >= 2 and s:  # the paired t-test is the one-sample test of the differences against zero
            p = float(stats.ttest_1samp(d, 0.0).pvalue)
        elif n >= 2:  # identical differences: zero spread, the test is undefined
            p = 0.0 if m else 1.0
        out["metrics"][name] = {"differences": d, "mean": m, "std": s, "n": n, "p_value": p,
                                "beyond_seed_noise": None if p is None else bool(p < alpha)}
    return out


def paired_table(comparison: dict, metrics: Sequence[str], percent: Sequence[str] = (),
                 headers: dict[str, str] | None = None) -> str:
    """A markdown table of `paired_comparison`: per metric, the mean ± std difference, p and the verdict."""
    headers = headers or {}
    lines = [f"| metric | {comparison['difference']} (mean ± std over {comparison['n_pairs']} pairs) | "
             "per pair | paired t-test p | beyond seed noise? |", "|---|---|---|---|---|"]
    for name in metrics:
        c = comparison["metrics"].get(name)
        if not c or c["mean"] is None:
            continue
        scale = 100.0 if name in percent else 1.0
        digits = 2 if name in percent else 3
        unit = " points" if name in percent else ""
        each = ", ".join(f"{v * scale:+.{digits}f}" for v in c["differences"])
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3f}"
        verdict = "n/a" if c["beyond_seed_noise"] is None else ("yes" if c["beyond_seed_noise"] else "no")
        lines.append(f"| {headers.get(name, name)} | {c['mean'] * scale:+.{digits}f} ± {c['std'] * scale:.{digits}f}"
                     f"{unit} | {each} | {p} | {verdict} |")
    return "\n".join(lines)
