"""Adapt to this lab from the cells reviewers classed in signed-off cases (`leukodx adapt --from-db`, the
admin page pages/adapt.py): the adaptation (leukodx.deploy.commission) runs in a background thread and writes
`<files>/cell-models/<UTC time>/`. The active cell model is the latest activation or rollback in the audit
log.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from leukodx.data.images import read_field
from leukodx.errors import LeukodxError
from leukodx.inference.cell_classes import NOT_LEUKOCYTE
from leukodx.inference.cell_classifier import CellClassifier, crop_cells
from leukodx.web.db import AuditEntry, Case, Field, audit

log = logging.getLogger("leukodx.web")
ACTIVATE, ROLLBACK = "cell_model.activate", "cell_model.rollback"
RUN_NAME = re.compile(r"^\d{8}T\d{6}Z$")


def reviewed_cells(db) -> list[tuple[Field, dict, str]]:
    """(field, cell, class) of each cell a reviewer classed in a signed-off case (the reviewer's class, never the
    AI's; "artefact" is the cell model's not_leukocyte)."""
    fields = db.scalars(select(Field).join(Case).where(Case.review_decision.is_not(None)).order_by(Field.id))
    return [(f, c, {"artefact": NOT_LEUKOCYTE}.get(c["label"], c["label"]))
            for f in fields for c in f.cells or [] if c.get("label")]


def class_counts(db, vocab: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(labelled cells, cases they are in) per class of the cell model's vocabulary."""
    cells = reviewed_cells(db)
    n, cases = Counter(k for _, _, k in cells), Counter(k for k, _ in {(k, f.case_id) for f, _, k in cells})
    return {k: (n[k], cases[k]) for k in vocab if n[k]}


def labelled_crops(sessions, files_dir: Path):
    """commission_cells' `from_db`: each reviewed cell cut from its stored field at its centroid and the field's
    red-cell scale, as the analysis cut it (crop_cells); the case is its group in the cross-validation."""

    def cut(clf: CellClassifier) -> list:
        out = []
        with sessions() as db:
            by_field: dict[int, list] = {}
            for f, c, k in reviewed_cells(db):
                if k in clf.classes:
                    by_field.setdefault(f.id, [f]).append((c, k))
            for f, *cells in by_field.values():
                result = f.result or {}
                d = result.get("rbc_diameter_px") if result.get("scale_factor") is not None else None
                crops = crop_cells(read_field(files_dir / f.image_file), [c["centroid"] for c, _ in cells], d,
                                   clf.size[0], clf.width_rbc)
                out += [(crop, k, f"web case {f.case_id}", f"{f.sha256}:{c['id']}")
                        for crop, (c, k) in zip(crops, cells, strict=True)]
        return out

    return cut


def models_dir(settings) -> Path:
    return settings.resolved_files_dir() / "cell-models"


def latest_run(settings) -> tuple[str, dict] | None:
    """(name, commissioning.json) of the newest adaptation in the data folder."""
    root = models_dir(settings)
    runs = sorted(p.name for p in root.iterdir() if RUN_NAME.match(p.name)) if root.is_dir() else []
    for name in reversed(runs):
        if (root / name / "commissioning.json").is_file():
            return name, json.loads((root / name / "commissioning.json").read_text())
    return None


def active_choice(db, settings) -> tuple[int, Path | None]:
    """(audit entry id, cell model folder; None: the bundled one) of the latest activation or rollback; (0, the
    `--cells` of serve) when none was made. A folder that is gone falls back to the bundled model."""
    e = db.scalars(select(AuditEntry).where(AuditEntry.action.in_((ACTIVATE, ROLLBACK)))
                   .order_by(AuditEntry.id.desc()).limit(1)).first()
    if e is None:
        return 0, settings.cells_dir
    path = json.loads(e.detail).get("dir")
    if path and not (Path(path) / "config.json").is_file():
        log.error("the adapted cell model %s activated by %s is gone: the bundled one is used", path, e.actor)
        return e.id, None
    return e.id, Path(path) if path else None


def choose(ctx, actor: str, run: str | None, reason: str) -> str:
    """Activate the adapted cell model of the adaptation `run` (None: roll back to the bundled one), audited with
    the reason; returns the version now in use."""
    reason = " ".join(reason.split())[:1000]
    if not reason:
        raise LeukodxError("Give a reason for changing the cell model.", "Say why, e.g. the commissioning report.")
    path = None if run is None else models_dir(ctx.settings) / run / "cells"
    if path is not None and (not RUN_NAME.match(run or "") or not (path / "config.json").is_file()):
        raise LeukodxError(f"There is no adapted cell model {run!r}.", "Run the adaptation first.")
    version = CellClassifier.load(path).version
    with ctx.sessions() as db:
        audit(db, actor, ROLLBACK if path is None else ACTIVATE, "cell-model", dir=path and str(path),
              version=version, reason=reason)
        db.commit()
    ctx.service.sync_cells()
    return version


class Adaptation:
    """The adaptation of this server process, one at a time, in a background thread: its state for the page."""

    def __init__(self) -> None:
        self.state, self.message = "idle", ""  # idle, running, done or failed
        self._lock = threading.Lock()

    def start(self, ctx, actor: str) -> bool:
        """Start it (False: one is running already)."""
        with self._lock:
            if self.state == "running":
                return False
            self.state, self.message = "running", "reading the labelled cells"
        out = models_dir(ctx.settings) / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        threading.Thread(target=self._run, args=(ctx, actor, out), name="adapt", daemon=True).start()
        return True

    def _run(self, ctx, actor: str, out: Path) -> None:
        from leukodx.deploy.commission import commission_cells

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            rep = commission_cells(None, out, from_db=labelled_crops(ctx.sessions, ctx.store.root),
                                   progress=lambda m: setattr(self, "message", m))
            with ctx.sessions() as db:
                audit(db, actor, "cell_model.adapt", out.name, n_cells=rep["n_cells"], use_adapted=rep["use_adapted"],
                      data_sha256=rep["data_sha256"])
                db.commit()
            self.state, self.message = "done", f"finished in {rep['seconds']} s"
        except LeukodxError as exc:
            self.state, self.message = "failed", exc.problem if "--" in exc.hint else exc.message  # no CLI hint
        except Exception as exc:  # a bug: logged, said on the page
            log.exception("the adaptation failed")
            self.state, self.message = "failed", f"{exc.__class__.__name__}: {exc}"
