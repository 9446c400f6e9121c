"""`leukodx bench`: the JSON has the contract keys and self-consistent timings (their size is measured, never
asserted: a benchmark, not a timed test)."""

from __future__ import annotations

import json

import pytest

from _tiny_models import make_tiny_models


def test_bench_json_keys(tmp_path):
    from leukodx.cli import main

    cdir, _ = make_tiny_models(tmp_path / "models")
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exc:  # the bundled segmenter: its cells are leukocytes, so fields get a call
        main(["bench", "--out", str(out), "--n", "4", "--batch-size", "2", "--heatmap-n", "1", "--classifier",
              str(cdir), "--threads", "1", "--seed-n", "1"])
    assert exc.value.code in (0, None)
    res = json.loads(out.read_text())
    assert {"eager", "onnx", "machine"} <= set(res)
    from leukodx.inference.cell_classifier import _bundled_dir

    # int8 runs where a model directory has model.int8.onnx (here at most the bundled cell model)
    assert ("onnx_int8" in res) == (_bundled_dir() / "model.int8.onnx").is_file()
    for key in ("eager", "onnx"):
        r = res[key]
        for k in ("analysis_p50_ms", "analysis_p95_ms", "decode_p50_ms", "classify_p50_ms", "segment_p50_ms",
                  "instances_p50_ms", "heatmap_p50_ms", "throughput_fields_per_s"):
            assert isinstance(r[k], float) and r[k] > 0, (key, k)  # every stage ran and took some time
        assert r["analysis_p95_ms"] >= r["analysis_p50_ms"]
        # the numpy stages and the model stages, summed per field (issue 23 sets a target on each)
        assert 0 < r["numpy_p50_ms"] <= r["analysis_p95_ms"] * 1.01 and 0 < r["models_p50_ms"]
        assert r["n_fields"] == 4 and r["n_heatmap"] == 1
        # a field's analysis holds its stages: none of them alone takes longer than the slowest whole analysis
        for k in ("decode", "classify", "segment", "instances"):
            assert r[f"{k}_p50_ms"] <= r["analysis_p95_ms"] * 1.01, (key, k)
    assert "ONNX" in res["onnx"]["classifier_engine"] and "eager" in res["eager"]["classifier_engine"]
    for k in ("cpu", "cores_usable", "threads", "torch", "onnxruntime", "load_average_at_start",
              "load_average_at_end"):
        assert k in res["machine"]
    assert "Load average" in (tmp_path / "bench.md").read_text()
    assert res["targets"]["analysis_p50_ms_max"] == 20.0 and res["targets"]["seed_pipeline_speedup_min"] == 20.0
    assert (tmp_path / "bench.md").read_text().startswith("# Analysis speed benchmark")
    # the reference study's pipeline as a baseline: the same fields as eager
    assert set(res["seed_pipeline"]) == set(res["eager"]) and res["seed_pipeline"]["n_fields"] == 1
    assert "inception_resnet_v2" in res["seed_pipeline"]["classifier_engine"]
    speedup = res["comparison"]["seed_pipeline_speedup_p50"]
    fastest = min(res[k]["analysis_p50_ms"] for k in ("eager", "onnx", "onnx_int8") if k in res)  # the fastest engine
    assert speedup == pytest.approx(res["seed_pipeline"]["analysis_p50_ms"] / fastest, abs=0.06)
    assert not (cdir / "model.onnx").exists()  # the export for the benchmark went to a temporary copy
