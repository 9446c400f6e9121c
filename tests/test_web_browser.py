"""A real browser (Debian's Chromium, driven by Playwright) through the clinician's whole workflow."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import pytest

from leukodx.web.app import create_app
from leukodx.web.auth import add_user
from leukodx.web.settings import Settings, database_url_for
from leukodx.web.testing import FakeAnalyzer, LiveServer, field_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                       "(Debian: apt-get install -y chromium)"),
]


def launch(p):
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture()
def server(tmp_path):
    app = create_app(Settings(database_url=database_url_for(tmp_path / "browser.db")), analyzer=FakeAnalyzer())
    with app.state.ctx.sessions() as db:
        add_user(db, "clara", "clara-password", "clinician")
        db.commit()
    with LiveServer(app) as url:
        yield url, app


def drop_file(page, name: str, data: bytes) -> None:
    """Drag and drop a file onto the drop zone (a real DataTransfer with a File in it)."""
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: dt, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [name, base64.b64encode(data).decode()],
    )


def test_clinician_workflow_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, app = server
    first = tmp_path / "field-one.jpg"
    first.write_bytes(field_bytes("Pre", 11, size=160))
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        external: list[str] = []
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(url) else None)

        # log in (the first page redirects there)
        page.goto(url + "/cases")
        expect(page).to_have_url(url + "/login?next=/cases")
        page.get_by_label("User name").fill("clara")
        page.get_by_label("Password").fill("clara-password")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="New case")).to_be_visible()

        # create a case
        page.get_by_label("Smear reference").fill("S-2026-0042")
        page.get_by_role("button", name="Create case").click()
        expect(page.get_by_role("heading", name="Case S-2026-0042")).to_be_visible()
        expect(page.get_by_text("Case created.")).to_be_visible()

        # upload two fields: one chosen with the file picker, one dragged and dropped
        page.locator("#file-input").set_input_files(str(first))
        expect(page.locator("article.field")).to_have_count(1, timeout=20_000)
        drop_file(page, "field-two.jpg", field_bytes("Pro", 12, size=160))
        expect(page.locator("article.field")).to_have_count(2, timeout=20_000)

        # a file that only pretends to be an image is refused with a message saying what to do
        bad = tmp_path / "not-really.jpg"
        bad.write_bytes(b"this is a text file")
        page.locator("#file-input").set_input_files(str(bad))
        expect(page.locator("#uploads li.failed")).to_contain_text("Not added: Not an image")
        expect(page.locator("#uploads li.failed")).to_contain_text("Use JPEG, PNG, TIFF or BMP")
        page.reload()
        expect(page.locator("article.field")).to_have_count(2)

        # results: class, confidence bar, outlined cells and count, heat-map toggle
        field = page.locator("article.field").first
        expect(field.locator(".cls").first).to_be_visible()
        expect(field.locator(".conf-fill")).to_be_visible()
        assert int(field.locator(".count").inner_text()) >= 1
        fill = field.locator(".conf-fill").element_handle()
        frac = page.evaluate("(el) => el.getBoundingClientRect().width / el.parentElement.clientWidth", fill)
        shown = int(field.locator(".conf-val").inner_text().split()[0])
        assert abs(frac * 100 - shown) <= 1.5, (frac, shown)  # the bar is as long as the number says
        img = field.locator("img")
        overlay_src = img.get_attribute("src")
        field.get_by_role("button", name="Heat map").click()
        expect(field.get_by_role("button", name="Heat map")).to_have_attribute("aria-pressed", "true")
        assert img.get_attribute("src") != overlay_src
        # the heat map is computed on first view, then shown
        page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=20_000)
        expect(field.locator(".img-status")).to_have_text("")
        expect(page.get_by_role("heading", name="Case summary")).to_be_visible()

        # override the AI's call for the first field, with a note
        ai_label = field.locator(".call .cls").inner_text().strip()
        other = next(c for c in ("Benign", "Early", "Pre", "Pro") if c != ai_label)
        field.get_by_label("Your call for this field").select_option(other)
        field.get_by_label("Note").fill("Nucleoli not convincing")
        expect(field.get_by_role("button", name=f"Override to {other}")).to_be_visible()
        field.get_by_role("button", name=f"Override to {other}").click()
        expect(page.get_by_text("Your decision for the field was saved.")).to_be_visible()
        first_field = page.locator("article.field").first
        expect(first_field.get_by_text("Overridden to")).to_be_visible()
        expect(first_field.locator(".call .cls")).to_have_text(ai_label)  # the AI's output is kept

        # sign off the case
        page.get_by_label("Final call").select_option("Pre")
        page.get_by_role("button", name=re.compile("^Sign off: ")).click()
        expect(page.get_by_text("The case is signed off.")).to_be_visible()

        # the printable report
        page.get_by_role("link", name="Printable report").click()
        expect(page.get_by_role("heading", name="Blood smear review — S-2026-0042")).to_be_visible()
        expect(page.get_by_text("Reviewed and signed off in leukodx by")).to_be_visible()
        assert page.locator("img.thumb").count() == 2
        assert page.evaluate("() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth > 0)")
        page.emulate_media(media="print")
        assert not page.get_by_role("button", name="Print this report").is_visible()
        page.emulate_media(media="screen")

        # the case list and the CSV export
        page.goto(url + "/cases?status=reviewed")
        expect(page.get_by_role("link", name="S-2026-0042")).to_be_visible()
        with page.expect_download() as dl:
            page.get_by_role("link", name="Export these cases as CSV").click()
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert [r["reference"] for r in rows] == ["S-2026-0042"]
        assert rows[0]["review_label"] == "Pre" and rows[0]["n_fields"] == "2"

        browser.close()
    assert errors == [], errors
    assert external == [], f"the pages asked for something outside the server: {external}"
