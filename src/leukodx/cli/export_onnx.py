"""`leukodx export onnx --model RUN --out FILE [--int8 --calibration DATA] [--opset N]`."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console


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
    ) -> None:
        """Export a model directory to ONNX ("image" -> "logits" [+ "features"], dynamic batch), verified
        against PyTorch; recorded in RUN/config.json when the file is written inside RUN."""
        from leukodx.deploy.export import add_int8, export_onnx

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
    m = q["metric"]
    verdict = "[green]kept[/]" if q["kept"] else "[yellow]not kept[/] (file removed)"
    speed = (f"; {q['int8_ms_batch1']:.1f} ms vs fp32 {q['fp32_ms_batch1']:.1f} ms a call"
             if "int8_ms_batch1" in q else "")
    console.print(f"int8: {m} fp32 {q[f'{m}_fp32']:.2f} % vs int8 {q[f'{m}_int8']:.2f} % on {q['n_eval']} "
                  f"images ({q['eval_data']}), drop {q['drop_points']:.2f} points "
                  f"(limit {q['max_drop_points']}){speed}: {verdict}"
                  + (f" -> {target.parent / q['file']}" if q["kept"] else ""))
