"""Typed settings of the web application: defaults -> environment (LEUKODX_<FIELD>, e.g. LEUKODX_MAX_FILES;
the database: LEUKODX_DB) -> command-line flags. Times are stored and sent by the API in UTC; `timezone` (the
lab's, default the server's own) is only how pages and reports show them (`Settings.local_time`)."""

from __future__ import annotations

import os
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from leukodx.cpus import usable_cores

MB = 1024 * 1024


def database_url_for(db: str | Path) -> str:
    """`--db` takes a SQLite file path or any SQLAlchemy URL (postgresql+psycopg://...)."""
    text = str(db)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def data_dir() -> Path:
    """Where leukodx keeps patient data by default, outside any source checkout: ${XDG_DATA_HOME:-~/.local/share}/leukodx."""
    base = os.environ.get("XDG_DATA_HOME", "")
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share") / "leukodx"


def default_database() -> str:
    """The database of `serve`, `user`, `token`, `backup` and `restore` without --db: $LEUKODX_DB, else
    data_dir()/leukodx.db (images beside it in leukodx-files/)."""
    return os.environ.get("LEUKODX_DB") or str(data_dir() / "leukodx.db")


def _cores() -> int:
    """The cores analyses use at once: one analysis per core, at most 4."""
    return min(4, usable_cores())


def local_zone_name() -> str:
    """The server's own time zone as an IANA name (TZ, /etc/timezone, the /etc/localtime link), else UTC."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    with suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    with suppress(OSError):
        link = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    return next((name for name in candidates if name and _is_zone(name)), "UTC")


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


class Settings(BaseSettings):
    """Everything the web application can be told: `Settings(**values)`, the environment filling what is not given."""

    model_config = SettingsConfigDict(env_prefix="LEUKODX_", validate_by_name=True)

    database_url: str = Field(default_factory=lambda: str(data_dir() / "leukodx.db"), validation_alias="LEUKODX_DB",
                              description="A SQLite file path or a database URL (LEUKODX_DB); default: data_dir().")
    files_dir: Path | None = Field(
        default=None, description="Where uploads, overlays and heat maps are kept (content-hash names)."
    )
    engine: Literal["onnx", "onnx-int8"] = "onnx"
    classifier_dir: Path | None = None
    segmenter_dir: Path | None = None
    cells_dir: Path | None = Field(default=None, description="The starting cell model (`serve --cells A/cells`) "
                                   "until an admin activates another on the Adapt page; default: the bundled one.")
    max_file_mb: float = Field(default=20.0, gt=0, description="The largest accepted image, MB.")
    max_files: int = Field(default=50, gt=0)
    analysis_workers: int = Field(default_factory=lambda: _cores(), gt=0,
                                  description="Analyses run at once: one per core (at most 4).")
    analysis_threads: int | None = Field(
        default=None, gt=0, description="CPU threads per analysis [default: cores / analysis_workers]."
    )
    analysis_queue: int = Field(
        default_factory=lambda: 16 * _cores(), ge=0,
        description="Analyses allowed to wait, sized to the cores (16 per core: at about 25 ms a field, under half a "
        "second of waiting); beyond it the server answers 503 with Retry-After at once.")
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

    timezone: str = Field(
        default_factory=local_zone_name, max_length=100,
        description="The lab's time zone (an IANA name such as Europe/Berlin) in which pages and reports show times "
        "(LEUKODX_TIMEZONE); stored times stay UTC. Default: the server's own.")
    differential_target: int = Field(
        default=100, ge=1, le=10000,
        description="Leukocytes to count per case (LEUKODX_DIFFERENTIAL_TARGET), as a digital morphology analyser "
        "does; a case takes the value it has when it is created.")
    accession_system: str = Field(
        default="urn:leukodx:accession", min_length=1, max_length=300,
        description="The URI of the lab's accession numbers, FHIR DiagnosticReport.identifier.system "
        "(LEUKODX_ACCESSION_SYSTEM).")
    um_per_px: float | None = Field(
        default=None, description="The camera's calibration in micrometres per image pixel (LEUKODX_UM_PER_PX), used "
        "instead of the scale estimated from each image; an upload may give its own.")
    patient_id_system: str = Field(
        default="urn:leukodx:patient-id", min_length=1, max_length=300,
        description="The URI of the hospital's patient identifiers (e.g. its MRN system), FHIR "
        "Patient.identifier.system (LEUKODX_PATIENT_ID_SYSTEM).")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        name = (v or "").strip()
        if not _is_zone(name):
            close = sorted(z for z in available_timezones() if z.lower().endswith(name.lower().rsplit("/", 1)[-1]))
            raise ValueError(f"{v!r} is not a time zone name; use an IANA name such as Europe/Berlin, "
                             "America/New_York or UTC" + (f" (did you mean {', '.join(close[:3])}?)" if close and
                                                          name else ""))
        return name

    @field_validator("um_per_px", mode="before")
    @classmethod
    def _um_per_px(cls, v: object) -> float | None:
        from leukodx.inference.scale import check_um_per_px

        return None if v is None or v == "" else check_um_per_px(v)  # a bad value: one line (LeukodxError)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local_time(self, dt: datetime | None) -> datetime | None:
        """A stored (UTC) time in the lab's time zone; naive times from SQLite are UTC."""
        if dt is None:
            return None
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(self.zone)

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
        """Uploads live beside a SQLite file (`leukodx.db` -> `leukodx-files/`), else in data_dir()/leukodx-files."""
        if self.files_dir is not None:
            return self.files_dir
        if self.database_url.startswith("sqlite:///") and ":memory:" not in self.database_url:
            db = Path(self.database_url.removeprefix("sqlite:///"))
            return db.with_name(db.stem + "-files")
        return data_dir() / "leukodx-files"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """The environment and defaults, with the overrides that are not None (the flags a user gave)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})
