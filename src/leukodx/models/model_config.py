"""The model directory's config.json, typed: read, validated and written by this module only.

A model directory holds ``config.json`` (this), ``model.safetensors`` and, once exported, ``model.onnx``::

    >>> cfg = read_model_config("src/leukodx/assets/classifier")
    >>> cfg.task, cfg.arch, cfg.classes, cfg.input_size, cfg.temperature, cfg.thresholds.low_confidence
    >>> update_model_config(run_dir, temperature=1.3)     # export and calibrate write through here

Keys this version does not know are kept as they are (``extra="allow"``), so a newer leukodx's additions
survive a round trip. Format 1 directories written before this module load unchanged: the segmenter's old
``thresholds.probability`` is read as ``thresholds.mask``. This module imports no torch: the clinic install
reads configs too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leukodx import __version__
from leukodx.errors import ModelError

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
OOD_FILE = "ood_features.npz"  # the OOD feature statistics' arrays (leukodx.inference.ood), beside config.json
OOD_ARRAYS = ("means", "components", "variances")
DEFAULT_LOW_CONFIDENCE = 0.5
DEFAULT_MASK_THRESHOLD = 0.5
# the Taleqani training fields' median red-cell diameter in px of a 224-px field (1,595 training rows of
# benchmarks/splits/taleqani-sgdc-seed0.csv, leukodx.inference.scale.estimate_rbc_diameter); 5th-95th percentile
# 14.5-21.7 px: the magnification the bundled models were trained at
DEFAULT_RBC_DIAMETER_224 = 17.0


class InstanceParams(BaseModel):
    """Cell-splitting parameters in pixels of a `reference_side` field (see leukodx.inference.instances)."""

    model_config = ConfigDict(extra="allow")
    min_area: int = 40
    min_distance: float = 7
    h: float = 2.0
    max_hole: int = 150
    reference_side: int = 224
    close_radius: float = 0.0  # px: gaps up to twice this are closed first (the lobes of one nucleus joined)
    # two-output segmenters: a cell whose nucleus covers less than this fraction of it is no leukocyte (every
    # leukocyte has a nucleus; a red cell's rim has none)
    min_nucleus_fraction: float = 0.0

    def as_base(self) -> dict:
        return {"min_area": self.min_area, "min_distance": self.min_distance, "h": self.h,
                "max_hole": self.max_hole, "reference_side": self.reference_side, "close_radius": self.close_radius}


class Thresholds(BaseModel):
    """Every threshold the analysis reads: `low_confidence` (classifier: calibrated confidence below it is
    flagged), `mask` (segmenter: sigmoid above it is leukocyte) and `instances` (segmenter: cell splitting)."""

    model_config = ConfigDict(extra="allow")
    low_confidence: float = DEFAULT_LOW_CONFIDENCE
    mask: float = DEFAULT_MASK_THRESHOLD
    instances: InstanceParams = Field(default_factory=InstanceParams)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mask" not in data:
            for old in ("probability", "foreground", "segmentation"):
                if isinstance(data.get(old), int | float) and not isinstance(data.get(old), bool):
                    data = {k: v for k, v in data.items() if k != old} | {"mask": float(data[old])}
                    break
        return data


class ScaleRule(BaseModel):
    """The red-cell scale step (leukodx.inference.scale.field_scale): the training fields' red-cell diameter in
    px of a 224-px field, the magnifications (field / training) used as they are, and those resampled to the
    training scale; outside `resample` a field is flagged. `window`: the training fields' side in px; the working
    image is padded to it and cut in windows of it (leukodx.inference.tiling)."""

    model_config = ConfigDict(extra="allow")
    rbc_diameter_224: float = DEFAULT_RBC_DIAMETER_224
    window: int = 224
    # the 1st-99th percentile of the training fields themselves is 0.82-1.34 (estimator spread and real cell-size
    # variation), and the classifier was trained with zoom 0.7-1.3, so resampling inside it would only add noise
    as_is: tuple[float, float] = (0.8, 1.35)
    # up to 12x: other labs' fields are photographed at up to ~9x the Taleqani fields' pixels per red cell
    # (Raabin: red cells 120-165 px across, measured with full confidence), and a flag is for a field the models
    # may get wrong, not for another camera
    resample: tuple[float, float] = (0.25, 12.0)


class CaseRule(BaseModel):
    """The case rule's cut-offs (leukodx.inference.summary): which classes are benign (malignant probability =
    1 - their probability), and the malignant probability range in which a case needs review."""

    model_config = ConfigDict(extra="allow")
    benign: list[str] = Field(default_factory=lambda: ["Benign"])
    undecided: tuple[float, float] = (0.25, 0.75)


class CellAgreement(BaseModel):
    """When a field's call and its cells disagree (the field is then flagged low_confidence, with the reason): a
    leukaemic call needs at least `min_blasts` leukocytes the cell model calls blast with a calibrated P(blast) of
    at least `min_blast_probability` (a cell model's own `cells.blast_threshold`, e.g. a lab's commissioned head,
    takes its place); a benign call is questioned when more than `max_blast_share_benign` of its counted
    leukocytes (and at least `min_blasts`) are blasts; any call is questioned when at least
    `max_unidentified_share` of its leukocytes are ones the cell model does not recognise."""

    model_config = ConfigDict(extra="allow")
    min_blasts: int = 1
    max_blast_share_benign: float = 0.5
    min_blast_probability: float = 0.0
    max_unidentified_share: float = 1.01  # above 1: off


class CellRule(BaseModel):
    """A cell-type model's facts (leukodx.inference.cell_classifier; its classes are the config's `classes`, in
    the order of its logits): each cell is cut centred on it, `crop_rbc` red-cell diameters wide, and resized to
    `crop_size` px (the model's input side); a field whose blast share among its counted leukocytes is at least
    `field_threshold` (chosen on validation fields) has blasts seen. `blast_threshold`, where set (a lab's
    commissioned head), is the P(blast) from which its blast call is trusted, in place of the classifier's
    `cell_agreement.min_blast_probability`."""

    model_config = ConfigDict(extra="allow")
    crop_rbc: float = 4.0
    crop_size: int = 64
    field_threshold: float = 0.5
    blast_threshold: float | None = None


class StainStats(BaseModel):
    """Stain statistics of a set of smear fields (leukodx.inference.stain.measure): per channel (R, G, B) optical
    density -ln((v + 1) / 256), over smear pixels only (the bright background left out), each field's dark
    (nuclear) and light (red cell, cytoplasm) pixels weighted equally so the number of leukocytes in a field does
    not move them; the median over fields of each field's weighted mean (`mean`) and standard deviation (`std`)."""

    model_config = ConfigDict(extra="allow")
    space: Literal["od"] = "od"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n_images: int = 0  # fields measured


class StainRule(BaseModel):
    """Stain normalisation (leukodx.inference.stain.normalize): a lab's fields (`source` statistics) mapped onto
    the training fields' (`target`) per channel in optical density, Reinhard-style; `strength` 0 = unchanged,
    1 = the full mapping. Written by `leukodx adapt`."""

    model_config = ConfigDict(extra="allow")
    source: StainStats
    target: StainStats
    strength: float = Field(1.0, ge=0.0, le=1.0)


class CropSegmenter(BaseModel):
    """A second segmenter, for images that a leukocyte fills (single-cell crops): an image at most `max_side_rbc`
    red cells across at the working scale, and at most `max_side_px` px across as sent, goes through the model in
    `dir` (relative to this model's directory) instead. Its windows are mostly mirrored copies of one cut cell,
    which a model trained on fields misses. The pixel limit keeps a camera's field whose red cells were measured
    too large with the field segmenter (None: no limit)."""

    dir: str = "crops"
    max_side_rbc: float = Field(4.0, gt=0)
    max_side_px: int | None = Field(None, gt=0)


class ModelConfig(BaseModel):
    """config.json of a model directory."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    format_version: int = FORMAT_VERSION
    leukodx_version: str = __version__
    task: Literal["classify", "segment"]
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    classes: list[str] = Field(default_factory=list)
    input_size: tuple[int, int]
    # segmenters: what each output channel is ("cell": whole leukocyte, defines instances; "nucleus"); empty for a
    # one-output segmenter from before, whose one channel is the leukocyte (as its references drew it)
    outputs: list[str] = Field(default_factory=list)
    normalization: str | None = None
    reference_mask_level: int = 128  # grey level above which a reference (Segmented) image is foreground
    temperature: float = 1.0
    # classifiers: test-time views beside the field as it is ("hflip", "vflip", "rot180"); their logits are averaged
    # before the temperature (chosen on validation; `leukodx calibrate` refits the temperature over them)
    tta: list[Literal["hflip", "vflip", "rot180"]] = Field(default_factory=list)
    tta_margin: float | None = None  # views only for tiles whose top two logits are closer than this (None: all)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    scale: ScaleRule = Field(default_factory=ScaleRule)
    case_rule: CaseRule = Field(default_factory=CaseRule)
    cell_agreement: CellAgreement = Field(default_factory=CellAgreement)
    cells: CellRule | None = None  # cell-type models only
    crop_segmenter: CropSegmenter | None = None  # segmenters only
    # the training fields' stain statistics (what `leukodx adapt` maps a lab onto), and the lab's stain rule
    # (None: fields are used as they are)
    stain_reference: StainStats | None = None
    stain: StainRule | None = None
    ood: dict[str, Any] | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    onnx: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        """Directories written before the typed sections: `mask_threshold` was the reference masks' grey level,
        the training fields' red-cell diameter sat in the OOD statistics, and a cell-type model's crop size was its
        input size."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "mask_threshold" in data:
            data.setdefault("reference_mask_level", data.pop("mask_threshold"))
        if "scale" not in data:
            d = ((data.get("ood") or {}).get("image_stats") or {}).get("rbc_diameter_224")
            if isinstance(d, int | float) and (((data.get("ood") or {}).get("image_stats") or {}).get("version")
                                                == 4):
                data["scale"] = {"rbc_diameter_224": float(d)}
        if isinstance(data.get("cells"), dict) and "crop_size" not in data["cells"] and data.get("input_size"):
            data["cells"] = data["cells"] | {"crop_size": int(data["input_size"][0])}
        return data

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, v: Any) -> Any:
        return 1.0 if v in (None, 0) else v

    @model_validator(mode="after")
    def _classes_for_classifier(self) -> ModelConfig:
        if self.task == "classify" and not self.classes:
            raise ValueError("a classifier's config must list its classes")
        return self

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=False)


def _fail(path: Path, problem: str) -> ModelError:
    return ModelError(f"{path} {problem}.",
                      "Restore the model directory from its training run, or retrain it with this leukodx "
                      f"({__version__}): leukodx train classify|segment ... --out RUN.")


def parse_model_config(raw: dict, path: str | Path = CONFIG) -> ModelConfig:
    """A config.json's content as a ModelConfig; ModelError naming the first bad key otherwise."""
    path = Path(path)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{path} is model format {version!r}; this leukodx {__version__} reads format {FORMAT_VERSION}.",
            "Retrain or re-export the model with this version of leukodx.")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        raise _fail(path, f"has a bad {where!r} ({err.get('msg')})") from None


def read_model_config(model_dir: str | Path) -> ModelConfig:
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelError(f"Model directory {d} does not exist.",
                         "Give a folder written by `leukodx train` (it holds config.json and model.safetensors).")
    path = d / CONFIG
    if not path.is_file():
        raise ModelError(f"{d} has no {CONFIG}: it is not a leukodx model directory.",
                         "Give a folder written by `leukodx train`.")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}).", "Restore it from the training run.") from None
    if not isinstance(raw, dict):
        raise _fail(path, "is not a JSON object")
    return parse_model_config(raw, path)


def write_model_config(model_dir: str | Path, config: ModelConfig | dict) -> ModelConfig:
    """Validate and write config.json atomically (a temporary file, then a rename)."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    raw = config.to_json() if isinstance(config, ModelConfig) else dict(config)
    raw = _store_arrays(d, raw)
    raw.setdefault("format_version", FORMAT_VERSION)
    raw.setdefault("leukodx_version", __version__)
    cfg = parse_model_config(json.loads(json.dumps(raw, default=str)), d / CONFIG)
    tmp = d / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(cfg.to_json(), indent=2, default=str))
    tmp.replace(d / CONFIG)
    return cfg


def _store_arrays(d: Path, raw: dict) -> dict:
    """Large fitted arrays (the OOD feature statistics) go to OOD_FILE beside config.json, not inline."""
    feats = (raw.get("ood") or {}).get("features")
    if not isinstance(feats, dict) or not all(k in feats for k in OOD_ARRAYS):
        return raw
    import numpy as np

    tmp = d / (OOD_FILE + ".tmp.npz")
    arrays: dict[str, Any] = {k: np.asarray(feats[k], dtype=np.float64) for k in OOD_ARRAYS}
    np.savez(tmp, **arrays)
    tmp.replace(d / OOD_FILE)
    kept = {k: v for k, v in feats.items() if k not in OOD_ARRAYS} | {"file": OOD_FILE}
    return raw | {"ood": raw["ood"] | {"features": kept}}


def update_model_config(model_dir: str | Path, **changes: Any) -> ModelConfig:
    """Read config.json, set top-level keys (e.g. temperature=..., onnx={...}), validate and write it back."""
    cfg = read_model_config(model_dir)
    return write_model_config(model_dir, cfg.to_json() | changes)
