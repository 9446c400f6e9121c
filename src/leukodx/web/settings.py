"""Typed settings of the web application: defaults -> environment (LEUKODX_<FIELD>, e.g. LEUKODX_MAX_FILES,
LEUKODX_MAX_FILE_MB, LEUKODX_FILES_DIR, LEUKODX_LAB_NAME; the database: LEUKODX_DB) -> command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024


def database_url_for(db: str | Path) -> str:
    """`--db` takes a SQLite file path or any SQLAlchemy URL (postgresql+psycopg://...)."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


class Settings(BaseSettings):
    """Everything the web application can be told: `Settings(**values)`, the environment filling what is not given."""

    model_config = SettingsConfigDict(env_prefix="LEUKODX_", validate_by_name=True)

    database_url: str = Field(default="leukodx.db", validation_alias="LEUKODX_DB",
                              description="A SQLite file path or a database URL (LEUKODX_DB).")
    files_dir: Path | None = Field(
        default=None, description="Where uploads, overlays and heat maps are kept (content-hash names)."
    )
    engine: Literal["onnx", "onnx-int8"] = "onnx"
    classifier_dir: Path | None = None
    segmenter_dir: Path | None = None
    max_file_mb: float = Field(default=20.0, gt=0, description="The largest accepted image, MB.")
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
        description="Compute the heat map (class activation map) with every upload; by default it is computed (and kept) the "
        "first time someone opens it, which keeps uploads fast.",
    )
    session_hours: float = Field(default=12.0, gt=0)
    cookie_secure: bool = False
    display_max_side: int = Field(default=1024, ge=64, description="Overlays and heat maps are drawn at most this big.")
    lab_name: str = Field(default="Haematology laboratory", max_length=200,
                          description="The lab's name, printed at the head of every report (LEUKODX_LAB_NAME).")
    lab_address: str = Field(default="", max_length=500,
                             description="The lab's address, printed under its name (LEUKODX_LAB_ADDRESS).")

    @field_validator("database_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return database_url_for(v)

    @field_validator("files_dir")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser().resolve()

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)

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
        """The environment and defaults, with the overrides that are not None (the flags a user gave)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})
