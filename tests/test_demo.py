"""The first-run demo: the whole pipeline on synthetic smears (slow: opt in with -m slow)."""

from __future__ import annotations

import csv

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from leukodx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path), "--per-class", "8", "--size", "64", "--epochs", "1"])
    assert exc.value.code in (0, None)
    assert (tmp_path / "evaluation" / "metrics.json").is_file()
    with open(tmp_path / "predictions" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["flag"] in {"ok", "low_confidence", "out_of_distribution"}
