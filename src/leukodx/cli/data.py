"""`leukodx data inspect|split|synth`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from leukodx.cli._common import console

app = typer.Typer(help="Inspect, split and make data sets.", no_args_is_help=True)


@app.command("inspect")
def inspect_cmd(
    data: Path = typer.Argument(..., help="Data folder: Original/<class>/ (+ Segmented/<class>/) or <class>/."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    mask_threshold: int = typer.Option(128, help="Reference mask = grayscale(Segmented) > this."),
) -> None:
    """Counts per class, image sizes, unreadable files, duplicate groups, missing and near-empty masks."""
    from leukodx.data.inspect import inspect_dataset

    report = inspect_dataset(str(data), mask_threshold=mask_threshold)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_report(report)


def _print_report(r: dict) -> None:
    from rich.table import Table

    console.print(f"[bold]{r['data']}[/] ({r['layout']} layout): {r['n_images']} images, {r['n_readable']} readable")
    t = Table("class", "images", "near-empty masks", "median mask foreground", title="Classes")
    masks = r["masks"]
    for c, n in r["classes"].items():
        t.add_row(c, str(n), str(masks["near_empty"].get(c, "-")) if masks["present"] else "-",
                  str(masks["median_foreground"].get(c, "-")) if masks["present"] else "-")
    console.print(t)
    console.print("Image sizes: " + ", ".join(f"{k} ({v})" for k, v in r["image_sizes"].items()))
    console.print(f"Exact-duplicate groups (same pixels): {len(r['exact_duplicate_groups'])}, "
                  f"{sum(len(g) for g in r['exact_duplicate_groups'])} files")
    console.print(f"Near-duplicate groups ({r['near_duplicate_rule']}): {len(r['near_duplicate_groups'])}, "
                  f"{sum(len(g) for g in r['near_duplicate_groups'])} files")
    if r["empty_classes"]:
        console.print(f"[yellow]Empty class folders:[/] {', '.join(r['empty_classes'])}")
    if masks["present"]:
        console.print(f"Masks missing: {masks['missing']}; near-empty ({masks['near_empty_rule']}): "
                      f"{sum(masks['near_empty'].values())}")
        for m in masks["unreadable"]:
            console.print(f"[yellow]unreadable mask[/] {m['path']}: {m['reason']}")
        for p in masks["size_mismatch_resized"]:
            console.print(f"[yellow]mask size differs from its image, resized (nearest):[/] {p}")
    else:
        console.print("No Segmented/ folder: no reference masks.")
    for u in r["unreadable"]:
        console.print(f"[red]unreadable[/] {u['path']}: {u['reason']}")
    if r["ignored_files"]:
        console.print(f"Ignored {len(r['ignored_files'])} file(s) not named as images, e.g. {r['ignored_files'][0]}")


@app.command("split")
def split_cmd(
    data: Path = typer.Argument(..., help="Data folder."),
    out: Path = typer.Option(..., "--out", help="Split CSV to write (path,label,split,group)."),
    strategy: str = typer.Option("sgdc", help="sgdc (one global stratified split) or per-class (equal counts)."),
    val: float = typer.Option(0.15, help="Validation fraction (per-class: of the smallest class, per class)."),
    test: float = typer.Option(0.15, help="Test fraction (per-class: of the smallest class, per class)."),
    seed: int = typer.Option(0, help="Seed for the shuffle; the same seed gives the same split."),
    common_test: bool = typer.Option(False, "--common-test", help="Draw the test set first with --test-seed "
                                     "only, so strategies and seeds share one test set."),
    test_seed: int = typer.Option(0, help="Seed of the common test set."),
    fixed_test: Path | None = typer.Option(None, help="Reuse the test rows of this split CSV."),
) -> None:
    """Group-aware split: exact and near duplicates always stay on one side."""
    from leukodx.data.split import make_split, write_split

    rows, summary = make_split(data, strategy, val, test, seed, common_test, test_seed, fixed_test)
    meta = write_split(rows, summary, out)
    c = summary["counts"]
    console.print(f"Wrote {out} ({summary['n_images']} images in {summary['n_groups']} groups, "
                  f"{summary['n_multi_member_groups']} with duplicates) and {meta}")
    for sp in ("train", "val", "test"):
        console.print(f"  {sp:5s} {sum(c[sp].values()):5d}  " + "  ".join(f"{k}={v}" for k, v in c[sp].items()))
    if summary["left_out_unreadable"]:
        console.print(f"[yellow]Left out {len(summary['left_out_unreadable'])} unreadable file(s).[/]")


@app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="Folder to write."),
    per_class: int = typer.Option(25, help="Fields per class."),
    size: int = typer.Option(224, help="Field size in pixels."),
    seed: int = typer.Option(0),
    layout: str = typer.Option("public", help="public (Original/ + Segmented/) or flat."),
) -> None:
    """Write synthetic smear fields with exact masks (no download needed)."""
    from leukodx.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(out, per_class=per_class, size=size, seed=seed, layout=layout)
    console.print(f"Wrote {4 * per_class} synthetic fields to {out}")
