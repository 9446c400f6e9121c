"""`leukodx bench [--out FILE.json]` (see DESIGN.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from leukodx.cli._common import console, err_console
from leukodx.io import write_json


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        out: Path = typer.Option(None, "--out", help="Write the results as JSON (and FILE.md beside it)."),
        images: Path = typer.Option(None, "--images", help="Folder of fields to time (default: synthetic 224x224)."),
        n: int = typer.Option(50, "--n", min=1, help="Number of fields."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Batch size for the throughput run."),
        threads: int = typer.Option(None, "--threads", help="CPU threads per inference (default: all usable)."),
        classifier: Path = typer.Option(None, "--classifier", help="Classifier model directory (default: bundled)."),
        segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter model directory (default: bundled)."),
        heatmap_n: int = typer.Option(10, "--heatmap-n", min=0, help="Fields timed with a heat map (class activation map)."),
        repeats: int = typer.Option(1, "--repeats", min=1, help="Passes over the fields for the latency figures."),
        seed_n: int = typer.Option(10, "--seed-n", min=0, help="Fields timed with the reference study's pipeline "
                                   "(InceptionResNetV2 + 64->1024 U-Net, eager; needs the train extra); 0 skips it."),
    ) -> None:
        """Time the analysis: PyTorch eager vs ONNX Runtime fp32 vs ONNX int8 (where an int8 model exists),
        per stage, on the same fields in the same run."""
        from rich.table import Column, Table

        from leukodx.deploy.bench import ENGINE_KEYS, ROWS, bench_markdown, run_bench

        res = run_bench(images, n=n, batch_size=batch_size, threads=threads, classifier_dir=classifier,
                        segmenter_dir=segmenter, heatmap_n=heatmap_n, repeats=repeats, seed_n=seed_n,
                        log=lambda s: err_console.print(s, highlight=False))
        keys = [k for k in (*ENGINE_KEYS, "seed_pipeline") if k in res]
        table = Table("", *(Column(k, justify="right") for k in keys),
                      title=f"analysis speed ({res['setup']['fields']}, {res['machine']['threads']} threads)")
        for label, key in ROWS:
            table.add_row(label, *[f"{res[k][key]:.1f}" if res[k].get(key) is not None else "-" for k in keys])
        console.print(table)
        if "comparison" in res:
            console.print("  ".join(f"{k}: {v}x" for k, v in res["comparison"].items()))
        for k, v in res["setup"]["notes"].items():
            console.print(f"[dim]{k}: {v}[/]", highlight=False)
        if out:
            write_json(res, out)
            md = out.with_suffix(".md")
            md.write_text(bench_markdown(res, "leukodx " + " ".join(sys.argv[1:])))
            console.print(f"wrote {out} and {md}")
