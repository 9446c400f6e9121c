"""Self-describing model directories: `config.json` + `model.safetensors` (+ `model.onnx` when exported).

The CLI, the web app and the exporter all load models through `load_model(dir)`, nothing else; config.json is
read and written by leukodx.models.model_config.
"""

from __future__ import annotations

from pathlib import Path

from leukodx.errors import ModelError
from leukodx.models.model_config import (
    CONFIG,
    FORMAT_VERSION,
    WEIGHTS,
    ModelConfig,
    read_model_config,
    write_model_config,
)

ONNX = "model.onnx"
__all__ = ["CONFIG", "FORMAT_VERSION", "ONNX", "WEIGHTS", "load_model", "read_config", "save_model"]


def read_config(model_dir: str | Path) -> dict:
    """config.json, validated, as a plain dict (for code that passes it on as JSON)."""
    return read_model_config(model_dir).to_json()


def save_model(model_dir: str | Path, model, config: dict | ModelConfig) -> Path:
    """Write the weights and config.json (validated by ModelConfig)."""
    from safetensors.torch import save_file

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(d / WEIGHTS)
    write_model_config(d, config)
    return d


def load_model(model_dir: str | Path, device: str = "cpu"):
    """Build the architecture named in config.json and load its weights. Returns (model in eval mode, config
    as a dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from leukodx.models.registry import create_model

    d = Path(model_dir)
    cfg = read_model_config(d)
    weights = d / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{d} has no {WEIGHTS}.", "Copy the whole model directory, or retrain.")
    model = create_model(cfg.task, cfg.arch, **cfg.arch_kwargs)
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
    return model.to(device).eval(), cfg.to_json()
