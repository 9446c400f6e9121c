"""Score the bundled cell-type model (or --model DIR) on the held-out parts, through the clinic runtime
(leukodx.inference.cell_classifier: the crops `crop_cells` cuts, ONNX Runtime, temperature, 'unidentified').

- PBC test part: per-class accuracy (top class, and the answer with 'unidentified').
- Taleqani test fields: blast vs non-blast per reference cell against the weak labels (a cell of an Early / Pre /
  Pro field counts as a blast, of a Benign field as none), and per field by the blast share of its counted
  cells (the runtime's field_score) against the field's class; the red-cell / background crops called
  not_leukocyte.
- Raabin test fields: leukocyte boxes called not_leukocyte (should be rare), red cells and platelets called
  not_leukocyte.

    python benchmarks/cell_types.py --pbc ../shared/data/pbc --taleqani ../shared/data/all-taleqani \
        --raabin ../shared/data/raabin-fields --out docs/results/cell-types

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

from leukodx.data.cell_crops import iter_pbc, iter_raabin, iter_taleqani
from leukodx.evaluation.cell_types import score_crops
from leukodx.inference.cell_classifier import CellClassifier
from leukodx.training.cells import crop_data

SPLITS = Path("benchmarks/splits")


def _probs(clf: CellClassifier, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    parts = [clf.predict_crops(crops[i:i + batch]) for i in range(0, len(crops), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, len(clf.classes)))


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


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

## PBC test part (another lab; {pbc['n']} crops, one centred cell each)
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
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="cell-type model directory (default: the bundled one)")
    ap.add_argument("--pbc", type=Path, required=True)
    ap.add_argument("--taleqani", type=Path, required=True)
    ap.add_argument("--raabin", type=Path, default=None)
    ap.add_argument("--pbc-split", type=Path, default=SPLITS / "pbc-seed0.csv")
    ap.add_argument("--taleqani-split", type=Path, default=SPLITS / "taleqani-sgdc-seed0.csv")
    ap.add_argument("--raabin-split", type=Path, default=SPLITS / "raabin-fields-seed0.csv")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--engine", default="onnx", help="onnx, or onnx-int8 (model.int8.onnx)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/cell-types"))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    clf = CellClassifier.load(a.model, threads=a.threads, engine=a.engine)
    low, ft = clf.low_confidence, clf.field_threshold
    m: dict = {"model": str(a.model or "src/leukodx/assets/cells (bundled)"), "engine": a.engine, "classes": list(clf.classes),
               "temperature": clf.temperature, "low_confidence": low, "field_threshold": ft,
               "machine": f"{platform.machine()}, {platform.python_version()}"}
    size, width = clf.size[0], clf.width_rbc
    pbc = crop_data(iter_pbc(a.pbc, a.pbc_split, parts=("test",)), size, width)
    m["pbc"] = score_crops(_probs(clf, pbc.crops), pbc, low, ft)
    print(f"PBC: {len(pbc)} crops", file=sys.stderr)
    tal = crop_data(iter_taleqani(a.taleqani, a.taleqani_split, parts=("test",)), size, width)
    m["taleqani"] = score_crops(_probs(clf, tal.crops), tal, low, ft)
    print(f"Taleqani: {len(tal)} crops", file=sys.stderr)
    if a.raabin is not None:
        raab = crop_data(iter_raabin(a.raabin, a.raabin_split, parts=("test",)), size, width)
        m["raabin"] = score_crops(_probs(clf, raab.crops), raab, low, ft)
        print(f"Raabin: {len(raab)} crops", file=sys.stderr)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "metrics.json").write_text(json.dumps(m, indent=2, default=float))
    command = "python benchmarks/cell_types.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (a.out / "README.md").write_text(readme(m, command))
    print(json.dumps({"pbc_balanced_accuracy": m["pbc"]["pbc"]["balanced_accuracy_top"],
                      "taleqani_cell_auc": m["taleqani"]["taleqani"]["cells"]["auc_p_blast"],
                      "taleqani_field_auc": m["taleqani"]["taleqani"]["fields"]["auc_blast_share"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
