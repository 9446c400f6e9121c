"""Typed settings of the web application: defaults -> environment (LEUKODX_*) -> command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

MB = 1024 * 1024


def database_url_for(db: str | Path) -> str:
    """`--db` takes a SQLite file path or any SQLAlchemy URL (postgresql+psycopg://...)."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


class Settings(BaseModel):
    """Everything the web application can be told. Build with `Settings(...)` or `Settings.from_env(...)`."""

    database_url: str = Field(default_factory=lambda: database_url_for("leukodx.db"))
    files_dir: Path | None = Field(
        default=None, description="Where uploads, overlays and heat maps are kept (content-hash names)."
    )
    engine: Literal["onnx", "onnx-int8", "torch"] = "onnx"
    classifier_dir: Path | None = None
    segmenter_dir: Path | None = None
    max_file_bytes: int = Field(default=20 * MB, gt=0)
    max_files: int = Field(default=50, gt=0)
    analysis_workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), gt=0)
    analysis_threads: int | None = Field(
        default=None, gt=0, description="CPU threads per analysis [default: cores / analysis_workers]."
    )
    analysis_queue: int = Field(default=32, ge=0, description="Analyses allowed to wait; beyond it: 503.")
    analysis_timeout_s: float = Field(default=60.0, gt=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    heatmap_on_upload: bool = Field(
        default=False,
        description="Compute the Grad-CAM heat map with every upload; by default it is computed (and kept) the "
        "first time someone opens it, which keeps uploads fast.",
    )
    session_hours: float = Field(default=12.0, gt=0)
    cookie_secure: bool = False
    display_max_side: int = Field(default=1024, ge=64, description="Overlays and heat maps are drawn at most this big.")
    lab_name: str = Field(default="Haematology laboratory", max_length=200,
                          description="The lab's name, printed at the head of every report (LEUKODX_LAB_NAME).")
    lab_address: str = Field(default="", max_length=500,
                             description="The lab's address, printed under its name (LEUKODX_LAB_ADDRESS).")

    @field_validator("files_dir")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser().resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def resolved_files_dir(self) -> Path:
        """Uploads live beside a SQLite file (`leukodx.db` -> `leukodx-files/`), else in ./leukodx-files."""
        if self.files_dir is not None:
            return self.files_dir
        if self.is_sqlite and self.database_url.startswith("sqlite:///") and ":memory:" not in self.database_url:
            db = Path(self.database_url.removeprefix("sqlite:///"))
            return db.with_name(db.stem + "-files")
        return Path("leukodx-files").resolve()

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Defaults, then LEUKODX_DB / LEUKODX_FILES_DIR / LEUKODX_MAX_FILE_MB / LEUKODX_MAX_FILES /
        LEUKODX_LAB_NAME / LEUKODX_LAB_ADDRESS, then overrides."""
        values: dict = {}
        env = os.environ
        if env.get("LEUKODX_DB"):
            values["database_url"] = database_url_for(env["LEUKODX_DB"])
        if env.get("LEUKODX_FILES_DIR"):
            values["files_dir"] = Path(env["LEUKODX_FILES_DIR"])
        if env.get("LEUKODX_MAX_FILE_MB"):
            values["max_file_bytes"] = int(float(env["LEUKODX_MAX_FILE_MB"]) * MB)
        if env.get("LEUKODX_MAX_FILES"):
            values["max_files"] = int(env["LEUKODX_MAX_FILES"])
        if env.get("LEUKODX_LAB_NAME"):
            values["lab_name"] = env["LEUKODX_LAB_NAME"]
        if env.get("LEUKODX_LAB_ADDRESS"):
            values["lab_address"] = env["LEUKODX_LAB_ADDRESS"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
