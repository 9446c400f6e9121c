"""`leukodx export onnx --model RUN --out FILE [--int8 --calibration DATA] [--opset N]`.

A cell-type model (config `cells`) takes no --calibration: its int8 is calibrated on the training crops and judged
on the validation crops of the sources in its config's training.sources (`cell_crops`), e.g. the bundled one's::

    leukodx export onnx --model src/leukodx/assets/cells --int8-only --n-calibration 400 --float-convs 3 1
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from leukodx.cli._common import console

if TYPE_CHECKING:
    import numpy as np


def register(app: typer.Typer) -> None:
    @app.command("onnx")
    def export_onnx_cmd(
        model: Path = typer.Option(..., "--model", help="Model directory (config.json + model.safetensors)."),
        out: Path = typer.Option(None, "--out", help="ONNX file to write (default: RUN/model.onnx)."),
        int8: bool = typer.Option(False, "--int8", help="Also write an int8 model (static quantisation), kept "
                                  "only if accuracy/Dice drops by <= 0.3 points."),
        calibration: Path = typer.Option(None, "--calibration", help="DATA folder of real images to calibrate "
                                         "int8 on (half calibrates, the other half judges the accuracy)."),
        eval_data: Path = typer.Option(None, "--eval-data", help="Labelled DATA to judge int8 on instead of the "
                                       "held-out half of --calibration."),
        split: Path = typer.Option(None, "--split", help="Split CSV of --calibration: int8 is calibrated on its "
                                   "train rows and judged on its val (else test) rows."),
        opset: int = typer.Option(17, "--opset", help="ONNX opset."),
        tolerance: float = typer.Option(1e-3, "--tolerance", help="Max abs logit difference to PyTorch allowed, "
                                        "relative to max(1, |logits|)."),
        n_calibration: int = typer.Option(200, "--n-calibration", help="Images used to calibrate int8."),
        n_eval: int = typer.Option(400, "--n-eval", help="Images used to compare int8 with fp32."),
        int8_only: bool = typer.Option(False, "--int8-only", help="Quantise the directory's existing model.onnx "
                                       "(no new fp32 export) and record the int8 verdict in its config.json."),
        float_convs: tuple[int, int] = typer.Option((0, 0), "--float-convs", help="int8 of a cell-type model: "
                                                    "leave this many convolutions at the start and the end float."),
        int8_method: str = typer.Option("minmax", "--int8-method", help="int8 of a cell-type model: activation "
                                        "ranges from min/max (minmax) or the 0.01-99.99th percentiles (percentile)."),
    ) -> None:
        """Export a model directory to ONNX ("image" -> "logits" [+ "features"], dynamic batch), verified
        against PyTorch; recorded in RUN/config.json when the file is written inside RUN."""
        from leukodx.deploy.export import add_int8, add_int8_crops, export_onnx
        from leukodx.models.model_config import read_model_config

        if (int8 or int8_only) and read_model_config(model).cells is not None:  # a cell-type model: its own crops
            if out is not None and out.resolve() != (model / "model.onnx").resolve():
                raise typer.BadParameter(f"{out}: the int8 of a cell-type model is made from and written into "
                                         f"{model} itself. Leave out --out, or copy {model} and export the copy.")
            if not int8_only:
                export_onnx(model, model / "model.onnx", opset=opset, tolerance=tolerance)
            with console.status(f"collecting the crops of {model}'s training sources ..."):
                t0 = time.perf_counter()
                calib, x_val, y_val = cell_crops(model, n_calibration)
            with console.status(f"quantising {model / 'model.onnx'} ..."):
                rec8 = add_int8_crops(model, calib, x_val, y_val, method=int8_method, float_convs=float_convs,
                                      collect_seconds=round(time.perf_counter() - t0, 1))
            _print_int8(rec8, model / "model.onnx")
            return
        if int8_only:
            if calibration is None:
                raise typer.BadParameter("--int8-only needs --calibration DATA.")
            with console.status(f"quantising {model / 'model.onnx'} ..."):
                rec8 = add_int8(model, calibration, eval_data=eval_data, split_csv=split, n_calibration=n_calibration,
                             n_eval=n_eval)
            _print_int8(rec8, model / "model.onnx")
            return
        target = out or (model / "model.onnx")
        with console.status(f"exporting {model} to {target} ..."):
            rep = export_onnx(model, target, opset=opset, int8=int8, calibration=calibration,
                              eval_data=eval_data, tolerance=tolerance, n_calibration=n_calibration,
                              n_eval=n_eval, split_csv=split)
        console.print(f"[green]wrote[/] {target} ({rep['size_mb']} MB, opset {rep['opset']}, inputs "
                      f"{rep['inputs']} -> outputs {rep['outputs']}, dynamic batch)")
        console.print(f"verified against PyTorch: max abs difference {rep['max_abs_diff']:.3g} "
                      f"(tolerance {rep['tolerance']:.3g})")
        q = rep.get("int8")
        if q:
            _print_int8(q, Path(target))
        if rep.get("recorded_in"):
            console.print(f"recorded in {rep['recorded_in']} under 'onnx'")


def _print_int8(q: dict, target: Path) -> None:
    verdict = "[green]kept[/]" if q["kept"] else "[yellow]not kept[/] (file removed)"
    speed = (f"; {q['int8_ms_batch1']:.1f} ms vs fp32 {q['fp32_ms_batch1']:.1f} ms a call"
             if "int8_ms_batch1" in q else "")
    drops = q["drop_points"] if isinstance(q["drop_points"], dict) else {q["metric"]: q["drop_points"]}
    scores = ", ".join(f"{m} fp32 {q[f'{m}_fp32']:.2f} % vs int8 {q[f'{m}_int8']:.2f} % (drop {d:.2f} points)"
                       for m, d in drops.items())
    console.print(f"int8: {scores} on {q['n_eval']} images ({q['eval_data']}), limit {q['max_drop_points']} "
                  f"points{speed}: {verdict}" + (f" -> {target.parent / q['file']}" if q["kept"] else ""))


def cell_crops(model: Path, n_calibration: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cell-type model's int8 inputs from the sources in its config's training.sources: `n_calibration`
    training crops (drawn with `seed`), and the single-labelled validation crops with their class indices."""
    import numpy as np

    from leukodx.models.checkpoint import read_config
    from leukodx.training.cell_augment import centre_input
    from leukodx.training.cells import collect

    config = read_config(model)
    src = config["training"]["sources"]
    data = collect(src["pbc"]["dir"], src["taleqani"]["dir"], (src.get("raabin") or {}).get("dir"),
                   pbc_split=src["pbc"]["split"], taleqani_split=src["taleqani"]["split"],
                   raabin_split=(src.get("raabin") or {}).get("split"), chula=(src.get("chula") or {}).get("dir"),
                   chula_split=(src.get("chula") or {}).get("split"))
    single = data.single(config["classes"])
    train = np.flatnonzero(data.split == "train")
    calib = np.sort(np.random.default_rng(seed).choice(train, min(n_calibration, len(train)), replace=False))
    val = np.flatnonzero((data.split == "val") & (single >= 0))

    def inputs(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([centre_input(data.crops[idx[i:i + 256]]).numpy() for i in range(0, len(idx), 256)])

    return inputs(calib), inputs(val), single[val]
