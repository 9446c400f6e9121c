"""One shared analyzer behind a bounded queue.

The models are loaded once (in the background at start-up, so /healthz answers at once and /readyz tells
when they are ready). Analyses run on a fixed pool of `analysis_workers` threads sharing the one analyzer
(one ONNX Runtime session); at most `analysis_queue` more may wait. Beyond that the server answers 503
with Retry-After rather than piling up work it cannot finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from leukodx.inference.types import CaseSummary, FieldResult
from leukodx.web.settings import Settings

log = logging.getLogger("leukodx.web")


class ServiceUnavailable(Exception):
    """Answered as 503 (busy, loading, or the models failed to load)."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class AnalysisTimeout(Exception):
    """Answered as 504."""


class AnalysisFailed(Exception):
    """The analyzer itself failed (a bug, not the user's doing): answered as 500 with a clear message."""


class AnalysisService:
    def __init__(self, settings: Settings, analyzer: Any | None = None):
        self.settings = settings
        self.analyzer = analyzer
        self.state = "ready" if analyzer is not None else "not started"
        self.error = ""
        self.load_seconds: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.analysis_workers, thread_name_prefix="analysis")
        self._pending = 0
        self._lock = threading.Lock()
        self._classes: list[str] | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def is_fake(self) -> bool:
        return bool(getattr(self.analyzer, "is_fake", False))

    @property
    def classes(self) -> list[str]:
        """The classifier's classes: the loaded analyser's; while it loads, its model config's ([] unreadable)."""
        if self.analyzer is not None:
            return list(self.analyzer.classes)
        if self._classes is None:
            from leukodx.assets import default_model_dir
            from leukodx.models.model_config import read_model_config

            try:
                self._classes = list(read_model_config(self.settings.classifier_dir or
                                                       default_model_dir("classify")).classes)
            except Exception:  # the models cannot load either: /readyz and every page say why
                self._classes = []
        return self._classes

    def summarize(self, results: list[FieldResult]) -> CaseSummary:
        """The analyser's own case rule (leukodx.inference.summary, as `predict` applies it); while the models
        load, the rule's defaults over the classifier's classes."""
        if self.analyzer is not None:
            return self.analyzer.summarize(results)
        from leukodx.inference.summary import summarize_case

        return summarize_case(results, self.classes, 0.5)

    def load(self) -> None:
        """Load the bundled (or configured) models; runs in a background thread."""
        self.state = "loading"
        t0 = time.perf_counter()
        try:
            from leukodx.inference.pipeline import load_analyzer

            s = self.settings
            threads = s.analysis_threads or max(1, (os.cpu_count() or 1) // s.analysis_workers)
            self.analyzer = load_analyzer(
                classifier_dir=s.classifier_dir, segmenter_dir=s.segmenter_dir, engine=s.engine, threads=threads
            )
            self.load_seconds = time.perf_counter() - t0
            self.state = "ready"
            log.info("models loaded in %.1f s", self.load_seconds)
        except Exception as exc:  # shown on /readyz and on every page
            self.state = "failed"
            self.error = getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"
            log.error("the models could not be loaded: %s", self.error)

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
                raise ServiceUnavailable(
                    f"The server is busy ({self._pending} analyses running or waiting); try again shortly.",
                    retry_after=2,
                )
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
            raise AnalysisFailed(
                f"The analysis failed ({exc.__class__.__name__}: {exc}). Nothing was stored. Try again; "
                "if it happens again, report it with the server's log."
            ) from exc

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
