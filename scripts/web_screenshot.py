"""Screenshot of the main case page for the README: docs/screenshot.png.

Uses the bundled models when they are there (else the fake test analyzer, and the page says so), and real
Taleqani fields from ../shared/data/all-taleqani when present (else synthetic fields).

    .venv/bin/python scripts/web_screenshot.py [--out docs/screenshot.png] [--fake]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from leukodx.web.app import create_app
from leukodx.web.auth import add_user
from leukodx.web.settings import Settings, database_url_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test support (a live server, a fake analyser) lives in tests/

from webtools import FakeAnalyzer, LiveServer, field_bytes  # noqa: E402
REAL = ROOT.parent / "shared" / "data" / "all-taleqani" / "Original"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def fields(tmp: Path) -> list[Path]:
    out = []
    for i, label in enumerate(("Pro", "Early", "Benign")):
        candidates = sorted((REAL / label).glob("*.jpg"))[5:6] if (REAL / label).is_dir() else []
        p = tmp / f"field-{i + 1}.jpg"
        p.write_bytes(candidates[0].read_bytes() if candidates else field_bytes(label, 40 + i, size=224))
        out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--fake", action="store_true", help="Use the fake analyzer even when models are bundled.")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    real = not args.fake and all((ROOT / "src/leukodx/assets" / d / "config.json").is_file()
                                 for d in ("classifier", "segmenter"))
    tmp = Path(tempfile.mkdtemp(prefix="leukodx-shot-"))
    app = create_app(Settings(database_url=database_url_for(tmp / "shot.db")),
                     analyzer=None if real else FakeAnalyzer())
    with app.state.ctx.sessions() as db:
        add_user(db, "dr.amini", "screenshot-password", "clinician")
        db.commit()
    with LiveServer(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        page.goto(url + "/login")
        page.get_by_label("User name").fill("dr.amini")
        page.get_by_label("Password").fill("screenshot-password")
        page.get_by_role("button", name="Log in").click()
        page.get_by_label("Smear reference").fill("S-2026-0113")
        page.get_by_role("button", name="Create case").click()
        expect(page.get_by_text("Case created.")).to_be_visible()
        import time

        deadline = time.time() + 120
        while not app.state.ctx.service.ready and time.time() < deadline:
            time.sleep(0.5)
        page.locator("#file-input").set_input_files([str(f) for f in fields(tmp)])
        expect(page.locator("article.field")).to_have_count(3, timeout=120_000)
        second = page.locator("article.field").nth(1)
        second.get_by_role("button", name="Heat map").click()
        page.wait_for_function(
            "(el) => el.complete && el.naturalWidth > 0 && !document.getElementById(el.id + '-status').textContent",
            arg=second.locator("img").element_handle(), timeout=120_000)
        page.wait_for_timeout(300)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(f"wrote {args.out} ({'bundled models' if real else 'FAKE analyzer'})")


if __name__ == "__main__":
    main()
