"""Self-describing model directories: `config.json` + `model.safetensors` (+ `model.onnx` when exported).

The CLI, the web app and the exporter all load models through `load_model(dir)`, nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

from leukodx import __version__
from leukodx.errors import ModelError

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"


def read_config(model_dir: str | Path) -> dict:
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelError(f"Model directory {d} does not exist.",
                         "Give a folder written by `leukodx train` (it holds config.json and model.safetensors).")
    cfg_path = d / CONFIG
    if not cfg_path.is_file():
        raise ModelError(f"{d} has no {CONFIG}: it is not a leukodx model directory.",
                         "Give a folder written by `leukodx train`.")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{cfg_path} is not valid JSON ({exc}).", "Restore it from the training run.") from None
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{d} was written in model format {version!r}; this leukodx {__version__} reads format {FORMAT_VERSION}.",
            "Retrain or re-export the model with this version of leukodx.",
        )
    for key in ("task", "arch"):
        if key not in cfg:
            raise ModelError(f"{cfg_path} lacks the key {key!r}.", "Restore it from the training run.")
    return cfg


def save_model(model_dir: str | Path, model, config: dict) -> Path:
    """Write config.json (task, arch, arch_kwargs, classes, input_size, normalization, ...) and the weights."""
    from safetensors.torch import save_file

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"format_version": FORMAT_VERSION, "leukodx_version": __version__, **config}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(d / WEIGHTS)
    (d / (CONFIG + ".tmp")).write_text(json.dumps(cfg, indent=2, default=str))
    (d / (CONFIG + ".tmp")).replace(d / CONFIG)
    return d


def load_model(model_dir: str | Path, device: str = "cpu"):
    """Build the architecture named in config.json and load its weights. Returns (model in eval mode, config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from leukodx.models.registry import create_model

    d = Path(model_dir)
    cfg = read_config(d)
    weights = d / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{d} has no {WEIGHTS}.", "Copy the whole model directory, or retrain.")
    model = create_model(cfg["task"], cfg["arch"], **cfg.get("arch_kwargs", {}))
    try:
        state = load_file(str(weights), device=device)
    except SafetensorError as exc:
        raise ModelError(f"{weights} cannot be read ({exc}).", "Copy the model directory again.") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{weights} does not fit the architecture in {CONFIG} ({first}).",
                         "The directory mixes files of different models; retrain or restore it.") from None
    return model.to(device).eval(), cfg
