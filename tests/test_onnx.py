"""ONNX export: named inputs/outputs, dynamic batch, ONNX Runtime == PyTorch, mismatches caught clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from _tiny_models import make_tiny_models
from leukodx.data.synthetic import synthetic_field
from leukodx.models.eager import load_eager


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from leukodx.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    cdir, sdir = make_tiny_models(root)
    reps = {d.name: export_onnx(d, d / "model.onnx") for d in (cdir, sdir)}
    return cdir, sdir, reps


def test_export_recorded_and_close_to_torch(exported):
    cdir, sdir, reps = exported
    for d in (cdir, sdir):
        rep = reps[d.name]
        assert (d / "model.onnx").is_file()
        assert rep["max_abs_diff"] < 1e-3
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["onnx"]["file"] == "model.onnx"
        assert cfg["onnx"]["inputs"] == ["image"]
        assert cfg["onnx"]["max_abs_diff"] == rep["max_abs_diff"]
    assert reps["cls"]["outputs"] == ["logits", "features", "cam"]  # SmearNet: CAM of its [mean, max]-pooled head
    assert reps["seg"]["outputs"] == ["logits"]


def test_onnx_runtime_matches_torch_any_batch(exported):
    import onnxruntime as ort
    import torch

    from leukodx.models import load_model
    from leukodx.models.eager import with_features

    cdir, sdir, _ = exported
    rng = np.random.default_rng(0)
    for d in (cdir, sdir):
        model, cfg = load_model(d)
        sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["image"]
        for n in (1, 3, 7):  # dynamic batch
            x = (rng.random((n, 3, 64, 64)) * 255).astype(np.float32)
            got = sess.run(["logits"], {"image": x})[0]
            with torch.inference_mode():
                ref = (with_features(model)(torch.from_numpy(x))[0] if cfg["task"] == "classify"
                       else model(torch.from_numpy(x))).numpy()
            assert got.shape == ref.shape and got.shape[0] == n
            assert np.abs(got - ref).max() < 1e-3


def test_engines_agree(exported):
    from leukodx.data.synthetic import synthetic_field
    from leukodx.inference.pipeline import load_analyzer

    cdir, sdir, _ = exported
    img = synthetic_field("Pro", 64, seed=3)[0]
    a = load_analyzer(cdir, sdir, engine="onnx", threads=1)
    b = load_analyzer(cdir, sdir, engine="torch", threads=1, eager=load_eager)
    assert "ONNX" in a.classifier.engine.source and "ONNX" in a.segmenter.engine.source
    ra, rb = a.analyze(img), b.analyze(img)
    for c in ra.probabilities:
        assert abs(ra.probabilities[c] - rb.probabilities[c]) < 1e-4
    assert (ra.mask != rb.mask).mean() < 0.01


def test_mismatching_onnx_is_a_clear_error(exported, tmp_path):
    from leukodx.errors import ModelError
    from leukodx.inference.pipeline import load_analyzer

    cdir, sdir, _ = exported
    # an ONNX file of another model (the segmenter's) dropped into the classifier's directory
    bad = tmp_path / "cls"
    shutil.copytree(cdir, bad)
    shutil.copy(sdir / "model.onnx", bad / "model.onnx")
    with pytest.raises(ModelError, match=r"model\.onnx.*(checksum|re-export|Re-export)"):
        load_analyzer(bad, sdir, engine="onnx")
    # same, without the export record: the input/output check still catches it
    cfg = json.loads((bad / "config.json").read_text())
    cfg.pop("onnx")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"features|classes|logits|Re-export"):
        load_analyzer(bad, sdir, engine="onnx")
    # an input size that disagrees with config.json
    cfg["input_size"] = [96, 96]
    shutil.copy(cdir / "model.onnx", bad / "model.onnx")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"input_size \[96, 96\].*Re-export"):
        load_analyzer(bad, sdir, engine="onnx")
    # not an ONNX file at all
    (bad / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="cannot be loaded by ONNX Runtime"):
        load_analyzer(bad, sdir, engine="onnx")


def test_model_dir_problems_are_clear(exported, tmp_path):
    from leukodx.errors import ModelError
    from leukodx.inference.pipeline import load_analyzer

    cdir, sdir, _ = exported
    old = tmp_path / "old"
    shutil.copytree(cdir, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 0
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model format"):
        load_analyzer(old, sdir)
    missing = tmp_path / "missing"
    shutil.copytree(cdir, missing)
    (missing / "model.safetensors").unlink()
    field = synthetic_field("Pre", 64, seed=1)[0]
    assert load_analyzer(missing, sdir).analyze(field).label  # the ONNX file alone
    with pytest.raises(ModelError, match="model.safetensors"):
        load_analyzer(missing, sdir, engine="torch", eager=load_eager)
    with pytest.raises(ModelError, match="needs the training install"):  # the clinic runtime has no PyTorch
        load_analyzer(missing, sdir, engine="torch")
    (missing / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model.safetensors"):
        load_analyzer(missing, sdir, eager=load_eager)
    with pytest.raises(ModelError, match="not a 'classify'"):
        load_analyzer(sdir, sdir)


def test_int8_on_synthetic_data(exported, tmp_path, synthetic_data):
    from leukodx.deploy.export import export_onnx

    cdir, _, _ = exported
    d = tmp_path / "cls"
    shutil.copytree(cdir, d)
    (d / "model.onnx").unlink()
    rep = export_onnx(d, d / "model.onnx", int8=True, calibration=synthetic_data, n_calibration=8, n_eval=16)
    q = rep["int8"]
    assert q["metric"] == "accuracy" and q["n_eval"] > 0
    assert q["kept"] == (q["drop_points"] <= 0.3 and q["int8_faster"])  # int8 must also be faster
    assert q["int8_ms_batch1"] > 0 and q["fp32_ms_batch1"] > 0
    assert (d / "model.int8.onnx").is_file() == q["kept"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["onnx"]["int8"]["kept"] == q["kept"]


def test_stale_onnx_after_retraining_is_caught(exported, tmp_path):
    """New weights saved over a model directory (config.json rewritten, no export record): the ONNX file's own
    metadata still names the weights it came from."""
    import torch

    from leukodx.errors import ModelError
    from leukodx.inference.pipeline import load_analyzer
    from leukodx.models import load_model, save_model

    cdir, sdir, _ = exported
    d = tmp_path / "cls"
    shutil.copytree(cdir, d)
    model, cfg = load_model(d)
    cfg.pop("onnx")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_model(d, model, {k: v for k, v in cfg.items() if k not in ("format_version", "leukodx_version")})
    with pytest.raises(ModelError, match="exported from other weights"):
        load_analyzer(d, sdir, engine="onnx")
    load_analyzer(d, sdir, engine="torch", eager=load_eager)  # the weights themselves are fine


def test_heat_map_from_onnx_outputs_matches_grad_cam(tmp_path):
    """A GAP + linear head (EfficientNet-Lite, the bundled classifier's family): the class activation map that the
    ONNX graph outputs gives the same heat map as Grad-CAM in PyTorch (within 0.02 per pixel), without torch."""
    import torch

    from leukodx.deploy.export import export_onnx
    from leukodx.inference.pipeline import Analysis
    from leukodx.inference.tiling import cut_tiles, stitch, to_batch
    from leukodx.models import create_model, save_model
    from leukodx.models.checkpoint import load_model
    from leukodx.models.eager import GradCAM

    torch.manual_seed(0)
    net = create_model("classify", "tf_efficientnet_lite0", num_classes=4)
    d = save_model(tmp_path / "lite", net, {"task": "classify", "arch": "tf_efficientnet_lite0",
                                            "arch_kwargs": {"num_classes": 4}, "classes": ["Benign", "Early", "Pre", "Pro"],
                                            "input_size": [64, 64]})
    rep = export_onnx(d, d / "model.onnx")
    assert rep["outputs"] == ["logits", "features", "cam"]
    a = Analysis(d, None, engine="onnx")
    rng = np.random.default_rng(0)
    fields = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)]
    grad_cam = GradCAM(load_model(d)[0])
    for rgb, r in zip(fields, a.analyze_many(fields, heatmap=True), strict=True):
        tiles, _, boxes = cut_tiles([rgb], (64, 64))
        ref = stitch(list(grad_cam(torch.from_numpy(to_batch(tiles)), [a.classes.index(r.label)] * len(tiles))),
                     boxes[0], *rgb.shape[:2])
        ref = ref / max(float(ref.max()), 1e-6)
        assert r.heatmap.shape == rgb.shape[:2]
        assert float(np.abs(r.heatmap - ref).max()) < 0.02


def test_int8_leaves_normalisation_and_shape_arithmetic_float(exported, tmp_path):
    """Issue 23: static int8 collapsed (25.8 % on validation) because the per-image normalisation (squares,
    mean, root) and the "same"-padding shape arithmetic were quantised. They stay float; convolutions are
    quantised."""
    import onnx

    from leukodx.deploy.export import float_nodes, quantize_file

    cdir, _, _ = exported
    src = cdir / "model.onnx"
    keep = set(float_nodes(src))
    g = onnx.load(str(src)).graph
    ops = {n.name: n.op_type for n in g.node}
    assert not any(ops[n] in ("Conv", "Gemm") for n in keep)
    norm = [n.name for n in g.node if "normalize" in n.name]
    assert norm and all(n in keep for n in norm)
    assert all(n.name in keep for n in g.node if n.op_type == "Shape")
    rng = np.random.default_rng(0)
    out = tmp_path / "model.int8.onnx"
    quantize_file(src, out, (rng.uniform(0, 255, (2, 3, 64, 64)).astype(np.float32) for _ in range(4)))
    q = onnx.load(str(out)).graph
    producers = {o: n for n in q.node for o in n.output}
    for n in q.node:
        if "normalize" in n.name and n.op_type != "Constant":  # fed by float tensors, not a DequantizeLinear
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)
    assert any(n.op_type == "QuantizeLinear" for n in q.node)  # and the rest is quantised
