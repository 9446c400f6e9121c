"""The bundled default models: assets/classifier/ and assets/segmenter/ (model directories)."""

from __future__ import annotations

from pathlib import Path

from leukodx.errors import ModelError

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODELS = {"classify": ASSETS / "classifier", "segment": ASSETS / "segmenter"}


def default_model_dir(task: str) -> Path:
    """The bundled model directory for `task` ("classify" or "segment")."""
    d = DEFAULT_MODELS[task]
    if not (d / "config.json").is_file():
        raise ModelError(f"The bundled {task} model is missing from {d}.",
                         "Reinstall leukodx, or pass --model RUN with a model directory of your own.")
    return d
