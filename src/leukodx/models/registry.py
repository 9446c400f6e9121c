"""A small registry with one factory per task. Model files are plugins that call `register`."""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from leukodx.errors import ModelError

TASKS = ("classify", "segment")
# modules that register models when imported; imported lazily, on first use of the registry
_PLUGINS = ("leukodx.models.classifiers", "leukodx.models.segmenters")


@dataclass(frozen=True)
class ModelSpec:
    task: str
    name: str
    builder: Callable
    description: str = ""
    cpu_friendly: bool = False


_REGISTRY: dict[tuple[str, str], ModelSpec] = {}
_FALLBACKS: dict[str, Callable] = {}  # task -> builder(name, **kwargs) for names timm knows


def register(task: str, name: str, description: str = "", cpu_friendly: bool = False):
    """Decorator: `@register("segment", "unet")` over a builder `(**kwargs) -> nn.Module`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")

    def deco(builder: Callable) -> Callable:
        _REGISTRY[(task, name)] = ModelSpec(task, name, builder, description, cpu_friendly)
        return builder

    return deco


def register_fallback(task: str):
    """Decorator: the builder `(timm_name, **kwargs) -> nn.Module` for any timm model name not registered here."""

    def deco(builder: Callable) -> Callable:
        _FALLBACKS[task] = builder
        return builder

    return deco


@functools.cache
def _load_plugins() -> None:
    for mod in _PLUGINS:
        importlib.import_module(mod)


def available(task: str) -> list[str]:
    """Names registered for `task` (classification also takes any timm model name)."""
    _load_plugins()
    return sorted(n for t, n in _REGISTRY if t == task)


def spec(task: str, name: str) -> ModelSpec | None:
    _load_plugins()
    return _REGISTRY.get((task, name))


def create_model(task: str, name: str, **kwargs):
    """Build a model by task and name; an unknown name gets an error that lists the valid names."""
    if task not in TASKS:
        raise ModelError(f"Unknown task {task!r}.", f"Use one of: {', '.join(TASKS)}.")
    s = spec(task, name)
    if s is not None:
        return s.builder(**kwargs)
    if task == "classify":
        import timm

        timm_names = timm.list_models()
        if name in timm_names and task in _FALLBACKS:
            return _FALLBACKS[task](name, **kwargs)
        close = difflib.get_close_matches(name, available(task) + timm_names, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(
            f"Unknown classification architecture {name!r}.",
            f"Valid names: {', '.join(available(task))}, or any timm model name "
            f"(e.g. inception_resnet_v2, nasnetalarge, resnet18, efficientnet_b0).{hint}",
        )
    raise ModelError(f"Unknown segmentation architecture {name!r}.", f"Valid names: {', '.join(available(task))}.")
