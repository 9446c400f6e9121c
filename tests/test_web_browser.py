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
from webtools import FakeAnalyzer, LiveServer, browser_marks, field_bytes, launch_chromium

pytestmark = browser_marks()


@pytest.fixture()
def server(tmp_path):
    app = create_app(Settings(database_url=database_url_for(tmp_path / "browser.db"), lab_name="Lab Hematologi Uji"),
                     analyzer=FakeAnalyzer(cell_labels=True))
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
        browser = launch_chromium(p)
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
        expect(page.locator(".thumbs li")).to_have_count(1, timeout=20_000)
        drop_file(page, "field-two.jpg", field_bytes("Pro", 12, size=160))
        expect(page.locator(".thumbs li")).to_have_count(2, timeout=20_000)

        # a file that only pretends to be an image is refused with a message saying what to do, and the same
        # image again is skipped; both stay listed, with their reasons, after the page updates
        bad = tmp_path / "not-really.jpg"
        bad.write_bytes(b"this is a text file")
        page.locator("#file-input").set_input_files([str(bad), str(first)])
        expect(page.locator("#uploads li.failed")).to_have_count(2, timeout=20_000)
        page.reload()
        problems = page.locator("#uploads li.failed")
        expect(problems).to_have_count(2)
        expect(problems.filter(has_text="not-really.jpg")).to_contain_text("Use JPEG, PNG, TIFF or BMP")
        expect(problems.filter(has_text="field-one.jpg")).to_contain_text("already field 1 of this case")
        expect(page.locator(".thumbs li")).to_have_count(2)
        page.get_by_role("button", name="Clear this list").click()
        expect(page.locator("#uploads li.failed")).to_have_count(0)

        # the viewer: a large image, zoom, the heat map with its legend, side by side
        expect(page.get_by_role("heading", name=re.compile(r"^Field 1 of 2"))).to_be_visible()
        expect(page.locator("#reviewed-count")).to_have_text("0 of 2 fields reviewed")
        view = page.locator("#view-img")
        assert view.bounding_box()["height"] >= 500, view.bounding_box()  # not a 270-px thumbnail
        before = page.locator("#zoom-level").inner_text()
        page.get_by_role("button", name="Zoom in").click()
        assert page.locator("#zoom-level").inner_text() != before
        expect(page.locator("#heat-legend")).to_be_hidden()
        page.get_by_role("button", name="Heat map").click()
        expect(page.get_by_role("button", name="Heat map")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#heat-legend")).to_be_visible()
        page.wait_for_function("(el) => el.complete && el.naturalWidth > 0 && el.src.includes('heatmap')",
                               arg=view.element_handle(), timeout=20_000)
        expect(page.locator("#view-status")).to_have_text("")
        page.get_by_role("button", name="Side by side").click()
        expect(page.locator("#pane-side")).to_be_visible()
        expect(page.locator("text=Keyboard shortcuts")).to_be_visible()

        # keyboard review: 2 picks "Early", Enter saves and moves to the next field; k goes back
        page.locator("body").press("2")
        expect(page.locator("#field-label")).to_have_value("Early")
        page.locator("#field-label").press("Enter")
        expect(page.get_by_text("Your decision for the field was saved.")).to_be_visible()
        expect(page.get_by_role("heading", name=re.compile(r"^Field 2 of 2"))).to_be_visible()
        expect(page.locator("#reviewed-count")).to_have_text("1 of 2 fields reviewed")
        page.locator("body").press("k")
        expect(page.get_by_role("heading", name=re.compile(r"^Field 1 of 2"))).to_be_visible()
        expect(page.locator(".review-box .signed").first).to_contain_text("Overridden to")

        # the cell gallery: every leukocyte's crop, grouped by class; reclassify one with a key
        with app.state.ctx.sessions() as db:
            from leukodx.web.db import Field

            n_cells = sum(len(f.cells) for f in db.query(Field).all())
        cells = page.locator("figure.cell")
        expect(cells).to_have_count(n_cells)
        page.wait_for_function("() => [...document.querySelectorAll('figure.cell img')].every(i => "
                               "(i.scrollIntoView(), true))")
        page.wait_for_function("() => [...document.querySelectorAll('figure.cell img')].every(i => "
                               "i.complete && i.naturalWidth > 0)", timeout=20_000)
        moved = page.locator("#" + cells.first.get_attribute("id"))
        moved.focus()
        moved.press("m")
        expect(page.locator("#gallery-status")).to_contain_text("saved as Monocyte")
        expect(page.locator("#diff-monocyte")).to_have_text("1")
        # under its new group at once; the focus goes on to the next card (work goes on down the group)
        expect(page.locator("#group-monocyte + .cells").locator("#" + moved.get_attribute("id"))).to_have_count(1)
        expect(moved).not_to_be_focused()
        expect(page.locator("figure.cell:focus")).to_have_count(1)
        page.reload()
        expect(page.locator("h3.gallery-group", has_text="Monocyte")).to_be_visible()
        # a crop leads to its place in the field
        cells.first.locator("a").click()
        expect(page).to_have_url(re.compile(r"\?field=\d+&cell=\d+#viewer$"))
        expect(page.locator("rect.picked")).to_have_count(1)

        # sign off: the page warns about the unreviewed field first
        expect(page.locator("#sign-off-warnings")).to_contain_text("1 of 2 field(s) not reviewed")
        page.get_by_label("Final call").select_option("Pre")
        page.get_by_role("button", name=re.compile("^Sign off: ")).click()
        expect(page.locator("#case-error")).to_contain_text("I have seen these warnings")
        page.get_by_label("I have seen these warnings").check()
        page.get_by_role("button", name=re.compile("^Sign off: ")).click()
        expect(page.get_by_text("The case is signed off.")).to_be_visible()
        expect(page.locator("#locked-note")).to_contain_text("this case is locked")

        # an amendment: a cell of the signed-off case needs a reason, then is kept as amendment 1
        cell = page.locator("#" + page.locator("figure.cell").first.get_attribute("id"))  # by id: a move regroups it
        cell.focus()
        cell.press("b")
        expect(page.locator("#gallery-status")).to_contain_text("type the reason for the amendment")
        page.locator("#cells-amendment").fill("Second look: nucleoli present")
        cell.focus()
        cell.press("b")
        expect(page.locator("#gallery-status")).to_contain_text("saved as Blast")
        page.reload()
        expect(page.locator("#amendments")).to_contain_text("Amendment 1")
        expect(page.locator("#amendments")).to_contain_text("Second look: nucleoli present")

        # the printable report: lab header, differential, amendments, reviewer per field
        page.get_by_role("link", name="Printable report").click()
        expect(page.get_by_role("heading", name="Blood smear review — S-2026-0042")).to_be_visible()
        expect(page.locator("#lab-name")).to_have_text("Lab Hematologi Uji")
        expect(page.get_by_text("Reviewed and signed off in leukodx by")).to_be_visible()
        expect(page.locator(".report-amendments")).to_contain_text("Second look: nucleoli present")
        expect(page.locator(".report-diff")).to_contain_text("Blast percentage")
        assert page.locator("img.thumb").count() == 2
        assert page.evaluate("() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth > 0)")
        for code in ("out_of_distribution", "low_confidence", "overrideed"):
            assert code not in page.content()
        page.emulate_media(media="print")
        assert not page.get_by_role("button", name="Print this report").is_visible()
        page.emulate_media(media="screen")

        # Back after logging out shows the login page, not the case (no-store)
        report_url = page.url

        # the case list and the CSV export
        page.goto(url + "/cases?status=reviewed")
        expect(page.get_by_role("link", name="S-2026-0042")).to_be_visible()
        with page.expect_download() as dl:
            page.get_by_role("link", name="Export these cases as CSV").click()
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert [r["reference"] for r in rows] == ["S-2026-0042"]
        assert rows[0]["review_label"] == "Pre" and rows[0]["n_fields"] == "2"

        # log out from the report, then Back: the login page, not the report from the browser's cache
        page.goto(report_url)
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(url + "/login")
        page.go_back()
        expect(page).to_have_url(re.compile(r"/login\?next=/cases/\d+/report"))
        expect(page.get_by_role("heading", name=re.compile("Blood smear review"))).to_have_count(0)
        browser.close()
    assert errors == [], errors
    assert external == [], f"the pages asked for something outside the server: {external}"
