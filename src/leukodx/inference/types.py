"""What the analysis returns: shared by the analysis pipeline, `leukodx predict` and the web application."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

FLAGS = ("ok", "low_confidence", "out_of_distribution", "unreadable")


@dataclass
class CellInstance:
    """One segmented leukocyte: pixel area, centroid (row, col) and bounding box (row0, col0, row1, col1)."""

    id: int
    area_px: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area_um2: float | None = None  # when the field's scale is known from its red cells (7.5 um across)
    nucleus_area_px: int | None = None  # with a two-output segmenter (whole cell + nucleus)
    nc_ratio: float | None = None  # nucleus area / whole-cell area, 0..1 (a blast's is high)
    touches_border: bool = False  # cut by the field's edge (counted; see leukodx.inference.instances)
    ai_label: str | None = None  # the cell-level model's suggestion (leukodx.inference.cell_classes.CELL_CLASSES)
    ai_confidence: float | None = None
    ai_probabilities: dict[str, float] | None = None  # {class: calibrated probability}, the model's classes


@dataclass
class FieldResult:
    """The analysis of one smear field. Arrays are in the coordinates of the input image."""

    path: str | None
    label: str | None  # None when the image could not be read
    probabilities: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.0
    malignant_probability: float = 0.0
    cell_count: int = 0
    cells: list[CellInstance] = field(default_factory=list)
    flag: str = "ok"
    flag_reason: str = ""
    mask: np.ndarray | None = None  # HxW bool: leukocyte pixels (whole cells with a two-output segmenter)
    nucleus_mask: np.ndarray | None = None  # HxW bool: nucleus pixels inside the cells (two-output segmenter)
    instances: np.ndarray | None = None  # HxW int32: 0 background, k for cell k
    heatmap: np.ndarray | None = None  # HxW float in [0, 1], class activation map of the predicted class
    image: np.ndarray | None = None  # HxWx3 uint8: the field as read (only when asked for: keep_images=True)
    ood_score: float | None = None
    size_note: str = ""  # how the field was resized or tiled for the models
    rbc_diameter_px: float | None = None  # estimated red-cell diameter in the image's pixels (None: not found)
    rbc_confidence: float = 0.0  # of that estimate, 0..1
    scale_factor: float | None = None  # the image was resampled by this before the models (1.0: as is)
    um_per_px: float | None = None  # from the red cells (7.5 um across); None when the scale is unknown
    scale_source: str = ""  # how the scale is known: "measured red cells", "estimated from ...", "given by the lab"
    scale_warning: str = ""  # a lab's scale at odds with the red cells measured: what to check (scale.calibration_doubt)
    no_call_reason: str = ""  # why label is None on a readable field: not a smear field, or no leukocyte found
    cell_model: str | None = None  # the version (CellClassifier.version) of the cell model that typed its cells
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: everything but the arrays."""
        d = asdict(self)
        for k in ("mask", "nucleus_mask", "instances", "heatmap", "image"):
            d.pop(k)
        return d


@dataclass
class CaseSummary:
    """Several fields of one smear summarised: mean probabilities, total blast count, the case call."""

    n_fields: int
    n_analysed: int
    label: str | None
    confidence: float
    malignant_probability: float
    mean_probabilities: dict[str, float]
    total_cell_count: int
    flags: dict[str, int]
    needs_review: bool
    reasons: list[str] = field(default_factory=list)


class Analyzer(Protocol):
    """The analysis pipeline's interface (see leukodx.inference.pipeline)."""

    classes: list[str]

    def analyze(
        self, image: np.ndarray | bytes | str | Path, *, name: str | None = None, heatmap: bool = False,
        um_per_px: float | None = None,
    ) -> FieldResult: ...

    def summarize(self, results: list[FieldResult]) -> CaseSummary: ...
