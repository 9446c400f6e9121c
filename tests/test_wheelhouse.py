"""`make wheelhouse` writes a folder a clinic PC with no internet installs from: a fresh venv, `pip install
--no-index --find-links`, then `leukodx predict` on a field, with no torch in that venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ("could not find a version", "no matching distribution", "connection", "temporary failure", "network")


def test_offline_install_from_the_wheelhouse_predicts(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    wh = tmp_path / "wheelhouse"
    res = subprocess.run(["make", "-s", "wheelhouse", f"WHEELHOUSE={wh}", f"VENV={Path(sys.executable).parents[1]}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 and any(w in (res.stdout + res.stderr).lower() for w in OFFLINE):
        pytest.skip("the package index cannot be reached to build the wheelhouse: " + res.stderr.strip()[-200:])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (wh / "INSTALL.txt").is_file() and list(wh.glob("leukodx-*.whl"))
    assert not list(wh.glob("torch-*.whl"))  # the clinic install has no torch
    venv = tmp_path / "clinic"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # the clinic venv alone: a PYTHONPATH naming a checkout's src would make pip see leukodx as installed already
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links", str(wh),
                          "leukodx"], capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    from leukodx.data.synthetic import synthetic_field

    Image.fromarray(synthetic_field("Pro", 224, seed=1)[0]).save(tmp_path / "field.png")
    res = subprocess.run([str(venv / "bin" / "leukodx"), "predict", str(tmp_path / "field.png"), "--out",
                          str(tmp_path / "p")], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len((tmp_path / "p" / "predictions.csv").read_text().splitlines()) == 2
    res = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert res.returncode != 0 and "No module named 'torch'" in res.stderr
