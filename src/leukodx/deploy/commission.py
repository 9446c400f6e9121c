"""`leukodx adapt --cells DIR --out A`: a lab's commissioning of the cell-type model on its OWN labelled cells
(README, "Commissioning the cell model on your own labelled cells").

    >>> report = commission_cells("lab_cells/", "adapted/")   # DIR/<class>/*.jpg, optional DIR/cases.csv (file,case)
    >>> # then: leukodx predict FIELDS --out OUT --cells adapted/cells

The head (leukodx.inference.cell_classifier.CellHead) is a multinomial logistic regression (L2,
class-balanced, L-BFGS on standardised features; numpy and scipy only, so it runs in the clinic install) on
the bundled model's ONNX `features` of each crop, cut as the pipeline cuts it. Its figures are cross-validated
(stratified, grouped by case when cases.csv is given), beside the bundled model's on the same cells. With no
blast folder (`kinds_only`) the head leaves P(blast) to the bundled model. `out` is written in a temporary
folder beside it, then renamed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import html
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from leukodx import __version__
from leukodx.data.images import IMAGE_SUFFIXES, read_field
from leukodx.errors import DatasetError, ImageError
from leukodx.inference.cell_classes import BLAST, UNIDENTIFIED
from leukodx.inference.cell_classifier import HEAD_FILE, NON_BLAST, CellClassifier, CellHead, crop_cells
from leukodx.inference.engines import softmax

MIN_CELLS = 10  # blasts and non-blasts each
L2 = 1.0  # penalty on the weights (sum of the class-balanced log-losses + L2 / 2 * |W|^2)
BATCH = 64
# more labelled cells for commission_cells: the model -> [(crop cut by its geometry, class, case, a key for the hash)]
LabelledCrops = Callable[[CellClassifier], list[tuple[np.ndarray, str, str, str]]]


def fit_head(x: np.ndarray, y: np.ndarray, classes: list[str]) -> CellHead:
    """Multinomial logistic regression of features x (N x D) on labels y (indices into classes)."""
    from scipy.optimize import minimize

    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    k, d = len(classes), z.shape[1]
    onehot = np.eye(k)[y]
    w_cell = (len(y) / (k * np.bincount(y, minlength=k).clip(1)))[y]  # balanced classes

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d * k].reshape(d, k), theta[d * k:]
        p = softmax(z @ w + b)
        nll = -(w_cell * np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))).sum()
        g = (p - onehot) * w_cell[:, None]
        return nll + L2 / 2 * (w * w).sum(), np.concatenate([(z.T @ g + L2 * w).ravel(), g.sum(0)])

    res = minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return CellHead(classes, mean, std, res.x[:d * k].reshape(d, k), res.x[d * k:])


def folds(y: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per cell: stratified by class, a group (case) never split; fewer folds when a class or the
    number of groups is small (at least 2)."""
    ug = np.unique(groups)
    n = np.bincount(y)
    k = max(2, min(k, len(ug), int(n[n > 0].min())))
    counts = np.stack([np.bincount(y[groups == g], minlength=y.max() + 1) for g in ug]).astype(float)
    order = np.random.default_rng(seed).permutation(len(ug))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    load, tot = np.zeros((k, counts.shape[1])), counts.sum(0).clip(1)
    fold_of = {}
    for i in order:  # the fold where the group's classes are scarcest so far
        f = int(np.argmin(((load + counts[i]) / tot).max(1) + 1e-6 * load.sum(1)))
        load[f] += counts[i]
        fold_of[ug[i]] = f
    return np.array([fold_of[g] for g in groups])


def _wilson(k: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    p, z = k / n, 1.959964
    c, h = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, float(c - h)), 4), round(min(1.0, float(c + h)), 4)]  # never -0.0 or past 1


def _auc(score: np.ndarray, pos: np.ndarray) -> float | None:
    neg = np.sort(score[~pos])
    if not pos.any() or not len(neg):
        return None
    lo, hi = np.searchsorted(neg, score[pos], "left"), np.searchsorted(neg, score[pos], "right")
    return round(float((lo + (hi - lo) / 2).sum() / (pos.sum() * len(neg))), 4)  # P(blast scores higher), ties 1/2


def figures(probs: np.ndarray, labels: list[str], truth: list[str], vocab: list[str], blast: bool) -> dict:
    """Blast sensitivity/specificity (answer == blast) with Wilson intervals, the P(blast) AUC, per-class recall."""
    t, a = np.array(truth), np.array(labels)
    out: dict = {"recall": {}}
    hits = 0
    for c in sorted(set(truth)):  # non_blast: any answer but blast or unidentified is right
        m = t == c
        hit = (a[m] != BLAST) & (a[m] != UNIDENTIFIED) if c == NON_BLAST else a[m] == c
        hits += int(hit.sum())
        out["recall"][c] = {"recall": round(float(hit.mean()), 4), "n": int(m.sum()),
                            "ci95": _wilson(int(hit.sum()), int(m.sum()))}
    out["accuracy"] = round(hits / len(t), 4)
    if not blast:
        return out | {"blast": "not measured (no blast cells labelled)"}
    pos, called = t == BLAST, a == BLAST
    tp, tn = int((pos & called).sum()), int((~pos & ~called).sum())
    return out | {"blast": {
        "sensitivity": round(tp / pos.sum(), 4), "sensitivity_ci95": _wilson(tp, int(pos.sum())),
        "specificity": round(tn / (~pos).sum(), 4), "specificity_ci95": _wilson(tn, int((~pos).sum())),
        "auc": _auc(probs[:, vocab.index(BLAST)], pos), "n_blast": int(pos.sum()), "n_other": int((~pos).sum())}}


def _collect(cells: Path, vocab: list[str]) -> tuple[list[Path], list[str]]:
    if not cells.is_dir():
        raise DatasetError(f"{cells} is not a folder.", "Give a folder of class folders: DIR/<class>/*.jpg.")
    allowed = set(vocab) | {NON_BLAST}
    dirs = sorted(d for d in cells.iterdir() if d.is_dir())
    bad = [d.name for d in dirs if d.name not in allowed]
    if bad:
        raise DatasetError(f"Unknown class folder(s) in {cells}: {', '.join(bad)}.",
                           f"Name each folder after one of: {', '.join(vocab)}, {NON_BLAST}.")
    files = [(f, d.name) for d in dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    return [f for f, _ in files], [c for _, c in files]


def _cases(cells: Path, files: list[Path]) -> np.ndarray:
    path = cells / "cases.csv"
    if not path.is_file():
        return np.arange(len(files)).astype(str)
    with path.open(newline="") as fh:
        table = {r["file"].strip(): r["case"].strip() for r in csv.DictReader(fh) if r.get("file") and r.get("case")}
    out = []
    for f in files:
        rel = f.relative_to(cells).as_posix()
        case = table.get(rel, table.get(f.name))
        out.append(f"case:{case}" if case else f"file:{rel}")  # a cell without a case: its own group
    return np.array(out)


def _has_stained_cell(rgb: np.ndarray) -> bool:
    """A nucleus-dark (low green) spot in the middle third of the image: optical density >= 0.25 against the
    image's bright background (its 90th percentile of green)."""
    g = rgb[..., 1].astype(np.float32) + 1
    h, w = g.shape
    centre = g[h // 3: h - h // 3 or h, w // 3: w - w // 3 or w]
    return centre.size > 0 and float(np.log(np.percentile(g, 90) / np.percentile(centre, 2))) >= 0.25


def cell_crops(clf: CellClassifier, files: list[Path], um_per_px: float | None,
               progress: Callable[[str], None] | None = None) -> list[np.ndarray]:
    """The crop of the centre cell of each image, cut as the pipeline cuts it (at the image's red-cell scale)."""
    from leukodx.inference.smear_check import check_smear

    crops, unreadable, no_cell = [], [], []
    for i, f in enumerate(files):
        try:
            rgb = read_field(f)
        except (ImageError, OSError):
            unreadable.append(f.name)
            continue
        if not _has_stained_cell(rgb):
            no_cell.append(f.name)
            continue
        sc = check_smear(rgb, clf.config.scale, um_per_px).scale
        d = sc.diameter_px if sc is not None and sc.known else None
        crops.append(crop_cells(rgb, [(rgb.shape[0] / 2, rgb.shape[1] / 2)], d, clf.size[0], clf.width_rbc)[0])
        if progress and i % 25 == 0:
            progress(f"cells {i + 1}/{len(files)}")
    if unreadable:
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise DatasetError(f"Cannot read {len(unreadable)} file(s): {', '.join(unreadable[:5])}{more}.",
                           "Replace or remove them (JPEG, PNG, TIFF or BMP images).")
    if no_cell:
        more = f" and {len(no_cell) - 5} more" if len(no_cell) > 5 else ""
        raise DatasetError(f"No stained cell found in the middle of: {', '.join(no_cell[:5])}{more}.",
                           "Each image must be centred on the stained cell it labels; remove or recrop them.")
    return crops


def commission_cells(cells: str | Path | None, out: str | Path, model_dir: str | Path | None = None,
                     um_per_px: float | None = None, min_sensitivity: float = 0.90, min_specificity: float = 0.90,
                     kinds_only: bool = False, progress: Callable[[str], None] | None = None,
                     from_db: LabelledCrops | None = None) -> dict:
    """Fit, cross-validate and write `out`/cells, `out`/commissioning.json and `out`/commissioning.html. `from_db`
    (also or instead of the folder `cells`): more labelled cells, as crops cut by the model's geometry
    (leukodx.web.adapt.labelled_crops: the cells reviewers classed in signed-off cases)."""
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "commissioning.json").is_file():
        raise DatasetError(f"{out} exists and is not an earlier commissioning's output.", "Give a new --out folder.")
    clf = CellClassifier.load(model_dir)
    if clf.head is not None:
        raise DatasetError(f"{clf.dir} already has a lab's head.", "Commission from the bundled cell model.")
    vocab = list(clf.classes)
    files, truth = _collect(Path(cells), vocab) if cells is not None else ([], [])
    db = from_db(clf) if from_db else []  # [(crop, class, case, key)]
    truth += [t for _, t, _, _ in db]
    n_blast = truth.count(BLAST)
    n_other = len(truth) - n_blast
    where = " and ".join([str(cells)] * (cells is not None) + ["the signed-off cases"] * (from_db is not None))
    if kinds_only and n_blast:
        raise DatasetError(f"--kinds-only, but {where} hold(s) {n_blast} blast(s).", "Leave out --kinds-only.")
    need = [] if kinds_only else [f"{MIN_CELLS - n} more {w}" for n, w in ((n_blast, "blast(s)"),
                                                                          (n_other, "non-blast cell(s)")) if n < MIN_CELLS]
    if kinds_only and len(set(truth)) < 2:
        need = ["cells of at least two kinds"]
    if need:
        raise DatasetError(f"Too few labelled cells in {where} ({n_blast} blast(s), {n_other} other): need "
                           f"{' and '.join(need)}.", f"Add them (at least {MIN_CELLS} of each), or use "
                           "--kinds-only without blasts.")
    groups = np.concatenate([_cases(Path(cells), files) if cells is not None else [], [g for _, _, g, _ in db]])
    if len(set(groups)) < 2:
        raise DatasetError("All cells belong to one case: cross-validation needs at least two.",
                           "Add cells of other cases.")
    crops = cell_crops(clf, files, um_per_px, progress) + [c for c, _, _, _ in db]
    if progress:
        progress(f"the cell model's features of {len(crops)} cells")
    runs = [clf.run_crops(np.stack(crops[i:i + BATCH])) for i in range(0, len(crops), BATCH)]
    feats, bundled = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
    head_classes = sorted(set(truth), key=lambda c: vocab.index(c) if c in vocab else len(vocab))
    y = np.array([head_classes.index(t) for t in truth])
    fold = folds(y, groups)
    oof = np.zeros_like(bundled)
    for f in range(fold.max() + 1):
        if progress:
            progress(f"cross-validation fold {f + 1}/{fold.max() + 1}")
        m = fold == f
        oof[m] = fit_head(feats[~m], y[~m], head_classes).apply(feats[m], bundled[m], vocab)
    head = fit_head(feats, y, head_classes)
    blast = not kinds_only
    adapted = figures(oof, clf.answer(oof)[0], truth, vocab, blast)
    own = figures(bundled, clf.answer(bundled)[0], truth, vocab, blast)
    use, why = _recommend(adapted, own, min_sensitivity, min_specificity)
    digest = hashlib.sha256()
    for path, t in sorted(zip(files, truth[:len(files)], strict=True)):
        digest.update(f"{hashlib.sha256(path.read_bytes()).hexdigest()} {t}\n".encode())
    for key, t in sorted((k, t) for _, t, _, k in db):
        digest.update(f"{key} {t}\n".encode())
    report = {"cells": where, "n_cells": len(truth), "per_class": {c: truth.count(c) for c in head_classes},
              "n_cases": int(len(np.unique(groups))), "n_folds": int(fold.max() + 1), "kinds_only": kinds_only,
              "grouped_by_case": bool(db) or (cells is not None and (Path(cells) / "cases.csv").is_file()),
              "adapted_cv": adapted, "bundled": own,
              "min_sensitivity": min_sensitivity, "min_specificity": min_specificity, "use_adapted": use,
              "recommendation": why, "data_sha256": digest.hexdigest(), "model": str(clf.dir),
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "leukodx_version": __version__}
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, clf, head, report, adapted, t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


def _write(tmp: Path, clf: CellClassifier, head: CellHead, report: dict, adapted: dict, t0: float) -> None:
    (tmp / "cells").mkdir(parents=True)
    shutil.copy2(clf.dir / "model.onnx", tmp / "cells" / "model.onnx")  # model.int8.onnx left out: its features differ
    np.savez(tmp / "cells" / HEAD_FILE, mean=head.mean, std=head.std, weights=head.weights, bias=head.bias)
    cfg = json.loads((clf.dir / "config.json").read_text())
    cfg["head"] = {"kind": "logistic", "file": HEAD_FILE, "classes": head.classes, "l2": L2}
    if BLAST in head.classes:  # its blast call is the one commissioned (top class blast): trusted as it stands
        cfg["cells"]["blast_threshold"] = 0.0
    cfg["commissioning"] = {k: report[k] for k in ("date", "n_cells", "per_class", "use_adapted", "recommendation",
                                                    "data_sha256")} | {"blast_cv": adapted["blast"]}
    (tmp / "cells" / "config.json").write_text(json.dumps(cfg, indent=2))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / "commissioning.json").write_text(json.dumps(report, indent=2))
    (tmp / "commissioning.html").write_text(_html(report))
    CellClassifier.load(tmp / "cells")  # the written model loads


def _recommend(adapted: dict, own: dict, min_sens: float, min_spec: float) -> tuple[bool, str]:
    a, b = adapted["blast"], own["blast"]
    if not isinstance(a, dict):
        return False, ("Blast detection was not measured (no blasts labelled): the adapted model changes only the "
                       "cell kinds; P(blast) stays the bundled model's. Compare the kinds' recall before using it.")
    better = a["sensitivity"] > b["sensitivity"] and a["specificity"] > b["specificity"]
    meets = a["sensitivity"] >= min_sens and a["specificity"] >= min_spec
    fig = (f"cross-validated blast sensitivity {a['sensitivity']:.1%} and specificity {a['specificity']:.1%} "
           f"(bundled: {b['sensitivity']:.1%}, {b['specificity']:.1%}; minimum {min_sens:.0%}, {min_spec:.0%})")
    if better and meets:
        return True, f"Use the adapted model: {fig}."
    why = "it does not beat the bundled model on both" if not better else "it misses the lab's minimum"
    return False, f"Keep the bundled model: {why}; {fig}."


def _html(r: dict) -> str:
    e = html.escape

    def ci(v: list[float] | None) -> str:
        return "" if v is None else f"{v[0]:.1%} to {v[1]:.1%}"

    def rows(fig: dict) -> str:
        return "".join(f"<tr><td>{e(c)}</td><td>{v['n']}</td><td>{v['recall']:.1%}</td><td>{ci(v['ci95'])}</td></tr>"
                       for c, v in fig["recall"].items())

    def blast(fig: dict) -> str:
        b = fig["blast"]
        if not isinstance(b, dict):
            return f"<p>{e(b)}</p>"
        return (f"<p>blast sensitivity {b['sensitivity']:.1%} (95 % CI {ci(b['sensitivity_ci95'])}), specificity "
                f"{b['specificity']:.1%} ({ci(b['specificity_ci95'])}), AUC {b['auc']}</p>")

    head = "<tr><th>class</th><th>cells</th><th>recall</th><th>95 % CI</th></tr>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>leukodx commissioning</title><style>body{{"
            f"font-family:sans-serif;max-width:52em;margin:2em auto}}td,th{{padding:2px 10px;text-align:left}}"
            f"</style></head><body><h1>Cell model commissioning</h1><p><b>{e(r['recommendation'])}</b></p>"
            f"<p>{r['n_cells']} cells from {e(r['cells'])} ({r['n_cases']} groups, {r['n_folds']}-fold "
            f"cross-validation{', grouped by case' if r['grouped_by_case'] else ''}); {e(r['date'])}, leukodx "
            f"{e(r['leukodx_version'])}; data sha256 {r['data_sha256'][:16]}...</p>"
            f"<h2>Adapted (cross-validated)</h2>{blast(r['adapted_cv'])}<table>{head}{rows(r['adapted_cv'])}</table>"
            f"<h2>Bundled model, same cells</h2>{blast(r['bundled'])}<table>{head}{rows(r['bundled'])}</table>"
            "</body></html>")
