"""`leukodx evaluate` (see DESIGN.md): metrics.json + report.html + plots for one or more model directories."""

from __future__ import annotations

from pathlib import Path

import typer

from leukodx.cli._common import console


def _summary_table(metrics: dict):
    from rich.table import Column, Table

    shift = "lab_shift" in metrics
    table = Table("model", "metric", Column("in distribution", justify="right"), title="leukodx evaluate")
    if shift:
        table.add_column("lab-shifted", justify="right")

    def fmt(v, pct=False):
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.2%}" if pct else f"{v:.4f}"
        return str(v)

    rows = {"classification": [("n_images", False), ("accuracy", True), ("balanced_accuracy", True),
                               ("macro_f1", False), ("roc_auc_macro", False), ("ece", False)],
            "segmentation": [("n_images", False), ("dice_global", False), ("dice_mean", False),
                             ("pixel_accuracy", True), ("n_reference_failed", False), ("count_mae", False)]}
    for section, keys in rows.items():
        models = metrics.get(f"{section}_models") or {metrics[section].get("model_name", section): metrics[section]}
        shifted = metrics.get(f"{section}_lab_shift_models") or (
            {metrics[section].get("model_name", section): metrics.get(f"{section}_lab_shift")} if shift else {})
        for name, m in models.items():
            if m.get("skipped"):
                table.add_row(f"{section}: {name}" if name != section else section, "skipped", m["skipped"],
                              *([""] if shift else []))
                continue
            ms = shifted.get(name) or {}
            for i, (key, pct) in enumerate(keys):
                cells = [f"{section}: {name}" if i == 0 else "", key, fmt(m.get(key), pct)]
                if shift:
                    cells.append(fmt(ms.get(key), pct))
                table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        data: Path = typer.Option(..., "--data", metavar="DATA", help="Data folder (Original/<class>/ [+ Segmented/] or <class>/)."),
        out: Path = typer.Option(..., "--out", metavar="DIR", help="Folder for metrics.json, report.html and plots/."),
        model: list[Path] | None = typer.Option(
            None, "--model", metavar="RUN", help="Model directory (repeat for several); default: the bundled models."),
        split: Path | None = typer.Option(None, "--split", metavar="SPLIT.csv", help="Split CSV: evaluate only its --subset rows."),
        subset: str = typer.Option("test", "--subset", help="Which rows of --split: train, val or test."),
        shift: str | None = typer.Option(None, "--shift", metavar="lab", help="'lab': also evaluate under synthetic "
                                         "lab-to-lab variation, side by side."),
        severity: float = typer.Option(1.0, "--severity", help="Strength of --shift lab (1 = documented ranges)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the lab shift and of --max-images sampling."),
        max_images: int | None = typer.Option(None, "--max-images", metavar="N", help="Evaluate a random subset of N fields."),
        batch_size: int = typer.Option(32, "--batch-size", metavar="N", help="Fields per forward pass."),
        engine: str = typer.Option("onnx", "--engine", help="onnx (what predict and the web app run), onnx-int8 "
                                   "or torch (PyTorch eager)."),
        no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots (the report has tables only)."),
    ) -> None:
        """Score models on DATA: DIR/metrics.json (contract keys), DIR/report.html and plots.

        Splits are by field and duplicate group, not patient (no patient IDs are published).
        """
        from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

        from leukodx.evaluation.evaluate import evaluate

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            metrics = evaluate(data, out, [str(m) for m in model] if model else None, split_csv=split,
                               split=subset, shift=shift, batch_size=batch_size, max_images=max_images,
                               seed=seed, severity=severity, progress=progress, plots=not no_plots,
                               engine=engine)
        console.print(_summary_table(metrics))
        for note in metrics.get("notes", []):
            console.print(f"[yellow]note:[/] {note}")
        for section in ("classification", "segmentation"):
            for key in ("missing_masks_note", "unreadable_note"):
                if metrics[section].get(key):
                    console.print(f"[yellow]note:[/] {section}: {metrics[section][key]}")
        console.print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
        console.print(f"[dim]{metrics['note']}[/]")
