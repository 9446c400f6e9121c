"""The clinic install (`pip install leukodx`, no extras): predict, serve and bench run without torch; a command
that needs the training extra says so in one line, with the pip command.

torch is made unimportable in a subprocess (sys.modules[name] = None), as it is on a PC without the extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BLOCK = ("torch", "torchvision", "timm", "safetensors", "onnx", "sklearn", "matplotlib")
PRELUDE = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCK)


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def cli_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_without_torch(f"from leukodx.cli import main\nmain({args!r})", cwd)


def test_predict_and_the_web_app_need_no_torch(tmp_path):
    from leukodx.data.synthetic import synthetic_field

    Image.fromarray(synthetic_field("Pre", 224, seed=0)[0]).save(tmp_path / "field.png")
    res = cli_without_torch(["predict", str(tmp_path / "field.png"), "--out", str(tmp_path / "p")], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and any(f",{flag}," in rows[1] for flag in ("ok", "low_confidence", "out_of_distribution"))
    res = run_without_torch("from leukodx.web import create_app\nfrom leukodx.web.settings import Settings\n"
                            "import leukodx.deploy.bench, leukodx.web.app\nprint('ok')", tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_a_training_command_names_the_extra(tmp_path):
    from leukodx.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", per_class=2, size=64)
    res = cli_without_torch(["train", "classify", "--data", str(data), "--out", str(tmp_path / "run")], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    err = " ".join(res.stderr.split())
    assert "pip install 'leukodx[train]'" in err and "Traceback" not in res.stderr


def test_heat_maps_come_from_the_onnx_graph_without_torch(tmp_path):
    """A classifier exported with its class activation maps gives heat maps with no torch at all."""
    import torch

    from leukodx.deploy.export import export_onnx
    from leukodx.models import create_model, save_model

    torch.manual_seed(0)
    d = save_model(tmp_path / "lite", create_model("classify", "tf_efficientnet_lite0", num_classes=4),
                   {"task": "classify", "arch": "tf_efficientnet_lite0", "arch_kwargs": {"num_classes": 4},
                    "classes": ["Benign", "Early", "Pre", "Pro"], "input_size": [64, 64]})
    export_onnx(d, d / "model.onnx")
    (d / "model.safetensors").unlink()  # the ONNX file alone
    np.save(tmp_path / "f.npy", np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    res = run_without_torch(
        "import numpy as np\nfrom leukodx.inference.pipeline import Analysis\n"
        f"a = Analysis({str(d)!r}, None)\nr = a.analyze(np.load({str(tmp_path / 'f.npy')!r}), heatmap=True)\n"
        "print(r.heatmap.shape, float(r.heatmap.max()))", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("(")[1].startswith("64, 96)") and res.stdout.strip().endswith("1.0")
