"""One shared analyzer behind a bounded queue; an upload end to end: check, analyse, draw, store, summarise.

The models are loaded once, in the background at start-up (/healthz answers at once, /readyz says when they
are ready). Analyses run on `analysis_workers` threads sharing the one analyzer (one ONNX Runtime session); at
most `analysis_queue` more may wait: beyond that the server answers 503 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from leukodx.cpus import usable_cores
from leukodx.inference.render import heatmap_png, overlay_png, shrink
from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.models.model_config import CaseRule, ModelConfig
from leukodx.web import adapt
from leukodx.web.cases import rules, serialise, store
from leukodx.web.settings import Settings
from leukodx.web.uploads import GoodImage, check_uploads

log = logging.getLogger("leukodx.web")


class AnalysisError(Exception):
    """Answered with `status`: the analyzer itself failed (a bug, not the user's doing) 500, with a clear message."""

    status: int = 500
    headers: dict[str, str] = {}


class ServiceUnavailable(AnalysisError):
    """Answered as 503 (busy, loading, or the models failed to load), with Retry-After."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.status, self.headers = 503, {"Retry-After": str(retry_after)}


class AnalysisTimeout(AnalysisError):
    status = 504


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def result_dict(name: str, r: FieldResult) -> dict:
    """A field's analysis as the API answers it (and as its `result` column keeps it)."""
    d = jsonable(r.to_dict())
    d["name"] = name
    d.pop("path", None)
    d["probabilities"] = {k: float(v) for k, v in (d.get("probabilities") or {}).items()}
    return d


class AnalysisService:
    def __init__(self, settings: Settings, analyzer: Any | None = None, sessions: Any = None, file_store: Any = None):
        """`sessions` (the database's session factory) and `file_store` (web.storage.FileStore): where uploads go."""
        self.settings = settings
        self.sessions, self.file_store = sessions, file_store
        self.analyzer = analyzer
        self.state = "ready" if analyzer is not None else "not started"
        self.error = ""
        self._executor = ThreadPoolExecutor(max_workers=settings.analysis_workers, thread_name_prefix="analysis")
        self._pending = 0
        self._lock = threading.Lock()
        self._config: ModelConfig | None = None
        self._cells_entry = 0  # the audit entry of the cell model in use (0: the settings' own)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def is_fake(self) -> bool:
        return bool(getattr(self.analyzer, "is_fake", False))

    @property
    def config(self) -> ModelConfig | None:
        """The classifier's model config: the loaded analyser's, else read from its directory (None: unreadable)."""
        loaded = getattr(getattr(self.analyzer, "classifier", None), "config", None)
        if isinstance(loaded, ModelConfig):
            return loaded
        if self._config is None:
            from leukodx.assets import default_model_dir
            from leukodx.models.model_config import read_model_config

            try:
                self._config = read_model_config(self.settings.classifier_dir or default_model_dir("classify"))
            except Exception:  # the models cannot load either: /readyz and every page say why
                return None
        return self._config

    @property
    def classes(self) -> list[str]:
        """The classifier's classes: the loaded analyser's; while it loads, its model config's ([] unreadable)."""
        if self.analyzer is not None:
            return list(self.analyzer.classes)
        return list(self.config.classes) if self.config else []

    @property
    def benign(self) -> list[str]:
        """The classes the case rule counts as benign (the classifier config's `case_rule.benign`)."""
        return list((self.config.case_rule if self.config else CaseRule()).benign)

    def summarize(self, results: list[FieldResult]) -> CaseSummary | None:
        """The analyser's own case rule (leukodx.inference.summary, as `predict` applies it); None while the
        models are not loaded: pages and the API then say that the models are loading rather than guess."""
        return None if self.analyzer is None else self.analyzer.summarize(results)

    def load(self) -> None:
        """Load the bundled (or configured) models; runs in a background thread."""
        self.state = "loading"
        t0 = time.perf_counter()
        try:
            from leukodx.inference.pipeline import load_analyzer

            s = self.settings
            threads = s.analysis_threads or max(1, usable_cores() // s.analysis_workers)
            entry, cells = self._active_cells()
            self.analyzer = load_analyzer(classifier_dir=s.classifier_dir, segmenter_dir=s.segmenter_dir,
                                          engine=s.engine, threads=threads, cell_classifier=cells)
            self._cells_entry = entry
            self.state = "ready"
            log.info("models loaded in %.1f s", time.perf_counter() - t0)
        except Exception as exc:  # shown on /readyz and on every page
            self.state = "failed"
            self.error = getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"
            log.error("the models could not be loaded: %s", self.error)

    def _active_cells(self) -> tuple[int, Path | None]:
        if self.sessions is None:
            return 0, self.settings.cells_dir
        with self.sessions() as db:
            return adapt.active_choice(db, self.settings)

    def sync_cells(self) -> None:
        """Use the cell model an admin chose last (web.adapt.active_choice), if another is in use: new analyses
        take it; fields analysed before keep the version they recorded."""
        entry, cells = self._active_cells()
        if entry != self._cells_entry and self.analyzer is not None:
            from leukodx.inference.cell_classifier import CellClassifier

            clf = CellClassifier.load(cells, getattr(self.analyzer, "threads", None), self.settings.engine)
            self.analyzer.cell_classifier, self._cells_entry = clf, entry
            log.info("cell model %s in use", clf.version)

    def start_loading(self) -> None:
        if self.analyzer is None and self.state == "not started":
            self.state = "loading"
            threading.Thread(target=self.load, name="load-models", daemon=True).start()

    def _check_ready(self) -> None:
        if self.state == "failed":
            raise ServiceUnavailable(f"The models could not be loaded: {self.error}", retry_after=60)
        if not self.ready:
            raise ServiceUnavailable("The models are still loading; try again in a few seconds.", retry_after=5)

    async def run(self, job: Callable[[Any], Any]) -> Any:
        """Run `job(analyzer)` on the analysis pool; 503 when the queue is full, 504 after the time limit."""
        self._check_ready()
        limit = self.settings.analysis_workers + self.settings.analysis_queue
        with self._lock:
            if self._pending >= limit:
                raise ServiceUnavailable(f"The server is busy ({self._pending} analyses running or waiting); "
                                         "try again shortly.", retry_after=2)
            self._pending += 1
        analyzer = self.analyzer

        def wrapped():
            try:
                return job(analyzer)
            finally:
                with self._lock:
                    self._pending -= 1

        try:
            fut = self._executor.submit(wrapped)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=self.settings.analysis_timeout_s)
        except TimeoutError:
            raise AnalysisTimeout(
                f"The analysis took longer than {self.settings.analysis_timeout_s:.0f} s and was abandoned."
            ) from None
        except Exception as exc:
            log.exception("the analysis failed")
            raise AnalysisError(
                f"The analysis failed ({exc.__class__.__name__}: {exc}). Nothing was stored. Try again; "
                "if it happens again, report it with the server's log."
            ) from exc

    async def analyse(self, images: list[GoodImage], *, heatmap: bool, render: bool,
                      um_per_px: float | None = None) -> list[tuple]:
        """[(image, FieldResult, overlay PNG or None, heat-map PNG or None)], one analysis at a time per image;
        `um_per_px` (else the LEUKODX_UM_PER_PX setting) replaces the scale estimated from each image."""
        side = self.settings.display_max_side
        um = um_per_px or self.settings.um_per_px
        given = {"um_per_px": um} if um else {}
        out = []
        for img in images:
            def job(analyzer, img=img):
                rgb = img.pixels()
                r = analyzer.analyze(rgb, name=img.name, heatmap=heatmap, **given)
                small = shrink(rgb, r, side) if render else None
                ov = overlay_png(*small, captioned=False) if small else None
                hm = heatmap_png(*small, captioned=False) if small and heatmap and r.heatmap is not None else None
                r.mask = r.instances = r.heatmap = None  # drawn; not kept (memory)
                img.rgb = None
                return r, ov, hm

            out.append((img, *await self.run(job)))
        return out

    async def analyse_files(self, files: list, heatmap: bool) -> dict:
        """POST /analyze: each file checked and analysed, and the case rule over them; nothing is stored."""
        images = await check_uploads(files, self.settings.max_files, self.settings.max_file_bytes)
        self._check_ready()  # also with no image to analyse: the case rule is the loaded models'
        done = await self.analyse(images, heatmap=heatmap, render=False)
        summary = self.summarize([r for _, r, _, _ in done])
        assert summary is not None  # the models are loaded (checked above)
        return {"results": [result_dict(img.name, r) for img, r, _, _ in done], "summary": jsonable(asdict(summary))}

    async def add_to_case(self, case_id: int, files: list, actor: str, amendment_reason: str | None,
                          um_per_px: float | None = None) -> dict:
        """An upload into a case: every file checked (one rejected: nothing stored), analysed, drawn, stored under
        its content hash, and added to the case with its summary in one transaction. An image already in the case
        (same SHA-256), or twice in the upload, is added once: `skipped` says so. Locked without a reason."""
        def known() -> set[str]:
            self.sync_cells()  # another server process may have activated another cell model
            with self.sessions() as db:
                case, hashes = store.field_hashes(db, case_id)
                rules.require_unlocked(case, amendment_reason, "adding fields")
                return hashes

        hashes = await run_in_threadpool(known)
        images = await check_uploads(files, self.settings.max_files, self.settings.max_file_bytes)
        in_case: list[tuple[str, str]] = []  # (file, sha256) of images already a field of the case
        twice: list[dict] = []
        fresh, seen = [], set()
        for img in images:
            digest = hashlib.sha256(img.data).hexdigest()
            if digest in hashes:
                in_case.append((img.name, digest))
            elif digest in seen:
                twice.append({"file": img.name, "sha256": digest, "reason": "The same image (identical content) "
                              "was sent twice in this upload; it was added once."})
            else:
                seen.add(digest)
                fresh.append(img)
        done = await self.analyse(fresh, heatmap=self.settings.heatmap_on_upload, render=True,
                                  um_per_px=um_per_px) if fresh else []
        return await run_in_threadpool(self._store, case_id, done, in_case, twice, actor, amendment_reason)

    def _store(self, case_id: int, done: list[tuple], in_case: list[tuple[str, str]], twice: list[dict],
               actor: str, amendment_reason: str | None) -> dict:
        blobs: list[tuple[bytes, str]] = []
        for img, _, ov, hm in done:
            blobs += [(img.data, img.ext)] + ([(ov, "png")] if ov else []) + ([(hm, "png")] if hm else [])
        names = iter(self.file_store.put_all(blobs))
        items = []
        for img, r, ov, hm in done:
            image_file = next(names)
            items.append({"sha256": image_file.split(".")[0], "image_file": image_file,
                          "overlay_file": next(names) if ov else None, "heatmap_file": next(names) if hm else None,
                          "display_name": img.name, "width": img.width, "height": img.height,
                          **store.field_columns(r), "result": result_dict(img.name, r)})
        with self.sessions() as db:
            case = store.lock_case(db, case_id, light=True)
            was_verified = bool(case.differential_verified)
            new, late = store.add_fields(db, case, items, self, actor, amendment_reason) if items else ([], [])
            for sk in twice:
                sk["field_id"] = next((f.id for f in case.fields if f.sha256 == sk["sha256"]), None)
            dups = [store.duplicate_skip(case, digest, name) for name, digest in in_case]
            return {"case": {**serialise.case_dict(case, threshold=rules.confidence_threshold(self)),
                             "verification_withdrawn": was_verified and not case.differential_verified},
                    "added": [serialise.field_dict(f) for f in new], "skipped": [d for d in dups if d] + twice + late}

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
