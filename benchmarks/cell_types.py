"""Score the bundled cell-type model (or --model DIR) on the held-out parts, through the clinic runtime
(leukodx.inference.cell_classifier: the crops `crop_cells` cuts, ONNX Runtime, temperature, 'unidentified').

- PBC test part: per-class accuracy (top class, and the answer with 'unidentified').
- Taleqani test fields: blast vs non-blast per reference cell against the weak labels (a cell of an Early / Pre /
  Pro field counts as a blast, of a Benign field as none), and per field by the blast share of its counted
  cells (the runtime's field_score) against the field's class; the red-cell / background crops called
  not_leukocyte.
- Raabin test fields: leukocyte boxes called not_leukocyte (should be rare), red cells and platelets called
  not_leukocyte.
- Chula fields (with --chula; issue 29, a clinic camera): per kind, the top class right (of all the model's
  classes) and the top of the five kinds right, each with n and its balanced mean, over --chula-parts (default
  test; "all" for a model trained without Chula). The split is by slide (`sources.chula_split`).

    python benchmarks/cell_types.py --pbc ../shared/data/pbc --taleqani ../shared/data/all-taleqani \
        --raabin ../shared/data/raabin-fields --chula ../shared/data/chula-wbc --out docs/results/cell-types
    python benchmarks/cell_types.py --model RUN --pbc ... --taleqani ... --chula ... --chula-parts all \
        --pbc-parts val --out /tmp/zero-shot    # a recipe chosen on labs held out of training

Writes OUT/metrics.json and OUT/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from leukodx.data.cell_crops import iter_chula, iter_pbc, iter_raabin, iter_taleqani
from leukodx.data.sources import SOURCES
from leukodx.evaluation.cell_types import balanced_accuracy, score_crops
from leukodx.inference.cell_classifier import CellClassifier
from leukodx.training.cells import crop_data

SPLITS = Path("benchmarks/splits")


def _probs(clf: CellClassifier, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    parts = [clf.predict_crops(crops[i:i + batch]) for i in range(0, len(crops), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, len(clf.classes)))


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def chula_scores(probs: np.ndarray, data, low: float, classes: list[str]) -> dict:
    """score_crops' Chula part plus, per kind, the top of the five kinds right (the other classes left out)."""
    kinds = list(SOURCES["chula"].classes)
    out = score_crops(probs, data, low)["chula"]
    cols = [classes.index(k) for k in kinds]
    pred = probs[:, cols].argmax(1)
    y = np.array([kinds.index(k) for k in data.labels])
    for k, v in out["per_class"].items():
        v["accuracy_top_of_kinds"] = round(float((pred[y == kinds.index(k)] == kinds.index(k)).mean()), 4)
    out["balanced_accuracy_top_of_kinds"] = round(balanced_accuracy(pred, y), 4)
    return out


def chula_table(c: dict) -> str:
    rows = "\n".join(f"| {k} | {v['n']} | {_pct(v['accuracy_top'])} | {_pct(v['accuracy_top_of_kinds'])} | "
                     f"{_pct(v['accuracy_answer'])} | {_pct(v['unidentified'])} | "
                     f"{', '.join(f'{a} {n}' for a, n in v['confusions'].items())} |" for k, v in c["per_class"].items())
    return ("| kind | n | top class correct | top of the 5 kinds correct | answer correct | unidentified | answers |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n| balanced | {c['n']} | {_pct(c['balanced_accuracy_top'])} | "
            f"{_pct(c['balanced_accuracy_top_of_kinds'])} | | | |")


def readme(m: dict, command: str) -> str:
    pbc = m["pbc"]["pbc"]
    tal = m["taleqani"]["taleqani"]
    rows = "\n".join(f"| {c} | {v['n']} | {_pct(v['accuracy_top'])} | {_pct(v['accuracy_answer'])} | "
                     f"{_pct(v['unidentified'])} | {', '.join(f'{k} {n}' for k, n in v['confusions'].items())} |"
                     for c, v in pbc["per_class"].items())
    cells, fields = tal["cells"], tal["fields"]
    raab = m.get("raabin") or {}
    rl = raab.get("raabin_leukocytes") or {}
    neg = raab.get("negatives") or {}
    tneg = m["taleqani"].get("negatives") or {}
    return f"""# Cell types: held-out results of the bundled cell-type model

Model: `{m['model']}` (classes {', '.join(m['classes'])}; temperature {m['temperature']}, unidentified below
{m['low_confidence']}, field threshold {m['field_threshold']} on the blast share). Scored through the clinic
runtime (ONNX Runtime, `CellClassifier.predict_crops` on the crops `crop_cells` cuts: centred, 4 red-cell
diameters wide, 64 px). {m['seconds']} s on {m['machine']}.

    {command}

## PBC {m['pbc_parts']} part (another lab; {pbc['n']} crops, one centred cell each)
Top-class accuracy {_pct(pbc['accuracy_top'])}, balanced {_pct(pbc['balanced_accuracy_top'])}. "Answer" counts
an 'unidentified' answer as wrong.

| class | n | top class correct | answer correct | unidentified | answers |
|---|---|---|---|---|---|
{rows}

## Taleqani test fields (weak labels)
Cells: {cells['n']} reference cells (the repaired nucleus references' components) of {fields['n_fields']} test
fields; {cells['n_malignant_field_cells']} in Early / Pre / Pro fields.
- Cell level, P(blast) of a leukaemic field's cell vs a benign field's cell: AUC {cells['auc_p_blast']:.3f};
  answered 'blast': {_pct(cells['sensitivity_blast_answer'])} of leukaemic fields' cells, not 'blast':
  {_pct(cells['specificity_blast_answer'])} of benign fields' cells.
- Answers on benign fields' cells: {cells['answers_benign_fields']}
- Answers on leukaemic fields' cells: {cells['answers_malignant_fields']}
- Field level, the blast share of the counted cells: AUC {fields['auc_blast_share']:.3f}; at the threshold
  {fields.get('threshold')} (chosen on validation fields): sensitivity {_pct(fields.get('sensitivity'))},
  specificity {_pct(fields.get('specificity'))}, accuracy {_pct(fields.get('accuracy'))}; share called per
  class {fields.get('per_class_called')}; {fields['fields_without_counted_cells']} fields without a counted cell.
- Red-cell and background crops far from every nucleus called not_leukocyte: {_pct(tneg.get('called_not_leukocyte'))}
  ({tneg.get('n', 0)} crops; {tneg.get('by_kind')}).

The labels are the fields' classes, not a cytologist's call per cell: a leukaemic field also holds normal
lymphocytes, so the cell-level numbers understate a correct model and say nothing per cell. No per-cell expert
label exists in these data.

## Raabin test fields (other labs; boxes without types)
- Leukocyte boxes called not_leukocyte: {_pct(rl.get('called_not_leukocyte'))} of {rl.get('n', 0)} (answers
  {rl.get('answers')}).
- Red-cell and platelet boxes called not_leukocyte: {_pct(neg.get('called_not_leukocyte'))} of {neg.get('n', 0)}
  ({neg.get('by_kind')}).
""" + ("" if "chula" not in m else f"""
## Chula fields, parts {m['chula_parts']} (a clinic camera; slides {', '.join(m['chula_slides'])})
Each typed leukocyte box's centre, cropped at the source's red-cell diameter ({m['chula_rbc']} px). "Top of the 5
kinds" reads only the five kinds' probabilities; "answer" counts 'unidentified' as wrong.

{chula_table(m['chula'])}
""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="cell-type model directory (default: the bundled one)")
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--taleqani", type=Path, required=True)
    ap.add_argument("--raabin", type=Path, default=None)
    ap.add_argument("--pbc-split", type=Path, default=SPLITS / "pbc-seed0.csv")
    ap.add_argument("--taleqani-split", type=Path, default=SPLITS / "taleqani-sgdc-seed0.csv")
    ap.add_argument("--raabin-split", type=Path, default=SPLITS / "raabin-fields-seed0.csv")
    ap.add_argument("--pbc-parts", default="test", help="PBC split parts, comma-separated (e.g. val)")
    ap.add_argument("--chula", type=Path, default=None, help="the chula-wbc folder (typed leukocyte boxes)")
    ap.add_argument("--chula-split", type=Path, default=SPLITS / "chula-wbc-seed0.csv")
    ap.add_argument("--chula-parts", default="test", help="Chula split parts, comma-separated, or 'all'")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--engine", default="onnx", help="onnx, or onnx-int8 (model.int8.onnx)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/cell-types"))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    clf = CellClassifier.load(a.model, threads=a.threads, engine=a.engine)
    low, ft = clf.low_confidence, clf.field_threshold
    m: dict = {"model": str(a.model or "src/leukodx/assets/cells (bundled)"), "engine": a.engine, "classes": list(clf.classes),
               "temperature": clf.temperature, "low_confidence": low, "field_threshold": ft,
               "machine": f"{platform.machine()}, {platform.python_version()}", "pbc_parts": a.pbc_parts}
    size, width = clf.size[0], clf.width_rbc
    pbc = crop_data(iter_pbc(a.pbc, a.pbc_split, parts=a.pbc_parts.split(",")), size, width)
    m["pbc"] = score_crops(_probs(clf, pbc.crops), pbc, low, ft)
    print(f"PBC: {len(pbc)} crops", file=sys.stderr)
    tal = crop_data(iter_taleqani(a.taleqani, a.taleqani_split, parts=("test",)), size, width)
    m["taleqani"] = score_crops(_probs(clf, tal.crops), tal, low, ft)
    print(f"Taleqani: {len(tal)} crops", file=sys.stderr)
    if a.raabin is not None:
        raab = crop_data(iter_raabin(a.raabin, a.raabin_split, parts=("test",)), size, width)
        m["raabin"] = score_crops(_probs(clf, raab.crops), raab, low, ft)
        print(f"Raabin: {len(raab)} crops", file=sys.stderr)
    if a.chula is not None:
        parts = ("train", "val", "test") if a.chula_parts == "all" else tuple(a.chula_parts.split(","))
        samples = list(iter_chula(a.chula, a.chula_split, parts=parts))
        chula = crop_data(samples, size, width)
        m["chula"] = chula_scores(_probs(clf, chula.crops), chula, low, list(clf.classes))
        m.update(chula_parts=",".join(parts), chula_slides=sorted({s.group for s in samples}),
                 chula_rbc=SOURCES["chula"].rbc_diameter)
        print(f"Chula: {len(chula)} crops", file=sys.stderr)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "metrics.json").write_text(json.dumps(m, indent=2, default=float))
    command = "python benchmarks/cell_types.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (a.out / "README.md").write_text(readme(m, command))
    print(json.dumps({"pbc_balanced_accuracy": m["pbc"]["pbc"]["balanced_accuracy_top"],
                      "taleqani_cell_auc": m["taleqani"]["taleqani"]["cells"]["auc_p_blast"],
                      "pbc_lymphocyte_top": m["pbc"]["pbc"]["per_class"]["lymphocyte"]["accuracy_top"],
                      "taleqani_field_auc": m["taleqani"]["taleqani"]["fields"]["auc_blast_share"],
                      **({"chula_balanced_top": m["chula"]["balanced_accuracy_top"],
                          "chula_balanced_top_of_kinds": m["chula"]["balanced_accuracy_top_of_kinds"],
                          "chula_top_per_kind": {k: v["accuracy_top"] for k, v in m["chula"]["per_class"].items()},
                          "chula_n": m["chula"]["n"]} if "chula" in m else {})}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
