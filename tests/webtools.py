"""Test support for the web application: a fake analyzer, synthetic field files, a live server in a thread or
a `leukodx serve` child process, and an app with users and tokens.

The fake analyzer is deterministic, fast and needs no trained model. NOT for clinical use: its classes (the
bundled classifier's) are drawn from a hash of the pixels. Pages show a "Test mode" banner whenever it is in use
(it has `is_fake = True`). A `leukodx serve` child process gets it with `--analyzer webtools:FakeAnalyzer` and
this folder on PYTHONPATH (ServeProcess does both).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from leukodx.inference.summary import malignant_probability
from leukodx.inference.types import CaseSummary, CellInstance, FieldResult

TESTS = Path(__file__).resolve().parent

if TYPE_CHECKING:
    import subprocess
    import threading

    import uvicorn


class FakeAnalyzer:
    is_fake = True

    def __init__(self, delay_s: float | None = None, cell_labels: bool = False):
        from leukodx.assets import default_model_dir
        from leukodx.models.model_config import read_model_config

        self.classes = list(read_model_config(default_model_dir("classify")).classes)  # the bundled model's
        self.low_confidence = 0.5
        # how long each analysis takes (like the real models); `serve --analyzer webtools:FakeAnalyzer` reads it
        # from LEUKODX_FAKE_DELAY_S
        self.delay_s = float(os.environ.get("LEUKODX_FAKE_DELAY_S") or 0.0) if delay_s is None else delay_s
        self.cell_labels = cell_labels  # a made-up cell-level suggestion on every other cell (for UI tests)
        self.calls = 0

    def analyze(self, image, *, name: str | None = None, heatmap: bool = False,
                um_per_px: float | None = None) -> FieldResult:
        from leukodx.data.images import read_rgb

        rgb = image if isinstance(image, np.ndarray) else read_rgb(image if not isinstance(image, Path) else str(image))
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        # "nuclei": dark, bluish pixels (the stain of leukocyte nuclei in Wright/Giemsa smears)
        mask = ndi.binary_opening(rgb[..., 1].astype(int) < 120, iterations=1)
        mask = ndi.binary_fill_holes(ndi.binary_dilation(mask, iterations=2))
        instances, n = ndi.label(mask)
        cells = []
        for k, obj in enumerate(ndi.find_objects(instances), start=1):
            area = int((instances[obj] == k).sum())
            cy, cx = ndi.center_of_mass(instances == k)
            cell = CellInstance(k, area, (float(cy), float(cx)), (obj[0].start, obj[1].start, obj[0].stop, obj[1].stop))
            if self.cell_labels and k % 2 == 1:
                cell.ai_label, cell.ai_confidence = ("blast" if k % 4 == 1 else "lymphocyte"), 0.8
            cells.append(cell)
        logits = rng.normal(0, 1, len(self.classes))
        logits[rng.integers(len(self.classes))] += 2.5
        p = np.exp(logits) / np.exp(logits).sum()
        probs = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
        label = max(probs, key=lambda c: probs[c])
        heat = None
        if heatmap:
            heat = ndi.gaussian_filter(mask.astype(np.float32), sigma=max(2.0, rgb.shape[0] / 30))
            heat = heat / heat.max() if heat.max() > 0 else heat
        flag, reason = "ok", ""
        if float(rgb.std()) < 3.0:  # as the real smear check does for a blank image
            flag, reason = "out_of_distribution", "The image is nearly blank: it does not look like a blood smear field"
        elif probs[label] < 0.5:
            flag, reason = "low_confidence", f"confidence {probs[label]:.0%} is under 50 %; review this field closely"
        return FieldResult(
            path=name, label=label, probabilities=probs, confidence=probs[label],
            malignant_probability=malignant_probability(probs), cell_count=len(cells),
            cells=cells, flag=flag, flag_reason=reason, mask=mask, instances=instances.astype(np.int32),
            heatmap=heat, size_note="fake analyzer: no resizing", timings_ms={"total": 0.0}, um_per_px=um_per_px,
            scale_source="given by the lab" if um_per_px else "",
            cell_model=getattr(getattr(self, "cell_classifier", None), "version", None),  # one the web app set
        )

    def summarize(self, results: list[FieldResult]) -> CaseSummary:
        """The real case rule, as the web app and `predict` apply it."""
        from leukodx.inference.summary import summarize_case

        return summarize_case(results, self.classes, self.low_confidence)


def field_bytes(label: str = "Pre", seed: int = 0, size: int = 128, fmt: str = "JPEG") -> bytes:
    """A synthetic smear field encoded as an image file (for tests and demos)."""
    import io

    from PIL import Image

    from leukodx.data.synthetic import synthetic_field

    rgb, _ = synthetic_field(label, size, seed)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread (for browser and load tests).

    >>> with LiveServer(app) as url: ...
    """

    def __init__(self, app, port: int = 0):
        self.app, self.port = app, port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> str:
        import socket
        import threading

        import uvicorn

        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                limit_concurrency=256)
        self.server = server = uvicorn.Server(config)
        self.thread = thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started:
            if time.time() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        if self.server is None or self.thread is None:  # never entered
            return
        self.server.should_exit = True
        self.thread.join(timeout=15)


class ServeProcess:
    """`leukodx serve` in a child process on 127.0.0.1 (for load, crash, settings and benchmark runs).

    >>> with ServeProcess(db, fake=True) as url: ...
    """

    def __init__(self, db: Path, *, fake: bool = True, port: int = 0, extra: list[str] | None = None,
                 ready_timeout: float = 180.0, env: dict[str, str] | None = None):
        self.db, self.fake, self.port, self.extra = Path(db), fake, port, list(extra or [])
        self.env = dict(env or {})  # more environment variables for the server (e.g. LEUKODX_MAX_FILES)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        import os
        import socket
        import subprocess
        import sys

        import httpx

        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "leukodx", "serve", "--db", str(self.db), "--port", str(self.port),
               "--log-level", "warning", *self.extra]
        if self.fake:
            cmd += ["--analyzer", "webtools:FakeAnalyzer"]
        env = {**os.environ, "LEUKODX_ADMIN_PASSWORD": os.environ.get("LEUKODX_ADMIN_PASSWORD", "admin-password"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p),
               **self.env}
        self.log = open(self.db.with_suffix(".serve.log"), "wb")  # noqa: SIM115
        self.proc = proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"leukodx serve exited with {proc.returncode}: "
                                   + self.db.with_suffix(".serve.log").read_text()[-2000:])
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("leukodx serve did not become ready in time")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown at all (for crash tests)."""
        import signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except Exception:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_test_app(folder: Path, analyzer=None, users: dict | None = None, database_url: str | None = None,
                  **settings):
    """An app with the fake analyzer, a clinician and an admin token, and `users` {name: (password, role)}
    (default alice/alice-password, clinician), on `database_url` (default: a fresh SQLite file in `folder`;
    images then in `folder`/web-files). Returns (app, clinician auth headers, admin auth headers)."""
    from leukodx.web.app import create_app
    from leukodx.web.auth import add_user, create_token
    from leukodx.web.settings import Settings, database_url_for

    if database_url is not None:
        settings.setdefault("files_dir", Path(folder) / "web-files")
    url = database_url or database_url_for(Path(folder) / "web.db")
    app = create_app(Settings(database_url=url, **settings), analyzer=analyzer or FakeAnalyzer())
    with app.state.ctx.sessions() as db:
        _, clin = create_token(db, "clinic-pc", "clinician")
        _, admin = create_token(db, "admin-pc", "admin")
        for name, (password, role) in (users or {"alice": ("alice-password", "clinician")}).items():
            add_user(db, name, password, role)
        db.commit()
    return app, {"Authorization": f"Bearer {clin}"}, {"Authorization": f"Bearer {admin}"}


def login(client, user: str = "alice", password: str = "alice-password"):
    """Log a TestClient in through the login form (with its CSRF cookie); returns the response."""
    import re

    page = client.get("/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if found is None:
        raise RuntimeError(f"the login page has no csrf_token field (HTTP {page.status_code})")
    csrf = found.group(1)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": csrf,
                                       "next": "/cases"}, follow_redirects=False)


# Debian's Chromium for the real-browser tests (playwright drives it): where it is, and how it is started
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright):
    """Debian's Chromium, headless, through playwright (`with sync_playwright() as p: launch_chromium(p)`)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def exclude_cells_without_an_ai_class(page) -> None:
    """In the case page's gallery, select every cell the AI left unidentified or unclassified (first, then the last
    with Shift) and exclude it with the `x` key, as a technologist does before verifying the differential."""
    from playwright.sync_api import expect

    for group in ("unidentified", "unclassified"):
        todo = page.locator(f"#group-{group} + .cells figure.cell")
        if todo.count():
            todo.first.click()
            todo.last.click(modifiers=["Shift"])
            page.keyboard.press("x")
            expect(page.locator("#gallery-status")).to_contain_text("saved as")


def browser_marks() -> list:
    """The pytest marks of a real-browser test module: `browser`, skipped with a reason without Chromium."""
    import pytest

    return [pytest.mark.browser,
            pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                               "(Debian: apt-get install -y chromium)")]
