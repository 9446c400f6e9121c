"""A real browser (Chromium via Playwright) through the review a hematology lab signs (issue 22): accession and
patient, an unassessable photo that is no smear, "> 99 %" for a probability under 1, the gallery's keyboard and
mouse moves with undo, the differential's verification, sign-off, and an amendment shown with before and after
on the page and the report, in the lab's time zone."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from leukodx.inference.summary import malignant_probability
from leukodx.web.app import create_app
from leukodx.web.auth import add_user
from leukodx.web.settings import Settings, database_url_for
from webtools import FakeAnalyzer, LiveServer, browser_marks, field_bytes, launch_chromium

pytestmark = browser_marks()

ROCKET, SURE, UNSURE = (1, 2, 3), (3, 2, 1), (2, 2, 2)  # marker pixels (top left) of the test's PNG images


class ReviewAnalyzer(FakeAnalyzer):
    """The fake analyzer, and two images it treats like the real pipeline would: a photo that is no smear (no
    class call, no cells) and a field the AI is sure about (Pre at 99.66 %)."""

    def analyze(self, image, *, name=None, heatmap=False):
        from leukodx.data.images import read_rgb

        rgb = image if isinstance(image, np.ndarray) else read_rgb(image if not isinstance(image, Path) else str(image))
        r = super().analyze(rgb, name=name, heatmap=heatmap)
        corner = tuple(int(v) for v in rgb[0, 0])
        if corner == ROCKET:
            r.label, r.probabilities, r.confidence, r.malignant_probability = None, {}, 0.0, 0.0
            r.cells, r.cell_count, r.heatmap = [], 0, None
            r.mask = np.zeros_like(r.mask) if r.mask is not None else None
            r.instances = np.zeros_like(r.instances) if r.instances is not None else None
            r.flag, r.flag_reason = "out_of_distribution", "The image does not look like a blood smear field"
        elif corner == SURE:
            rest = (1 - 0.9966) / (len(self.classes) - 1)
            r.probabilities = {c: (0.9966 if c == "Pre" else rest) for c in self.classes}
            r.label, r.confidence, r.flag, r.flag_reason = "Pre", 0.9966, "ok", ""
            r.malignant_probability = malignant_probability(r.probabilities)
        elif corner == UNSURE:
            rest = (1 - 0.3) / (len(self.classes) - 1)
            r.probabilities = {c: (0.3 if c == "Early" else rest) for c in self.classes}
            r.label, r.confidence = "Early", 0.3
            r.flag, r.flag_reason = "low_confidence", "confidence 0.300 is under 0.5"
            r.malignant_probability = malignant_probability(r.probabilities)
        return r


def png_with(marker: tuple[int, int, int], rgb: np.ndarray) -> bytes:
    from PIL import Image

    rgb = rgb.copy()
    rgb[0, 0] = marker
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def rocket_photo(size: int = 160) -> np.ndarray:
    """A made-up photo of a rocket: blue sky, a white body, a red nose, a flame."""
    y, x = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[...] = (70, 130, 220)
    body = (abs(x - size / 2) < size / 10) & (y > size * 0.3) & (y < size * 0.8)
    nose = (y <= size * 0.3) & (y > size * 0.15) & (abs(x - size / 2) < (y - size * 0.15) * 0.7)
    flame = (y >= size * 0.8) & (y < size * 0.95) & (abs(x - size / 2) < size / 14)
    img[body], img[nose], img[flame] = (240, 240, 240), (200, 30, 30), (255, 170, 0)
    return img


def smear(label: str, seed: int, size: int = 160) -> np.ndarray:
    from leukodx.data.synthetic import synthetic_field

    return synthetic_field(label, size, seed)[0]


@pytest.fixture()
def server(tmp_path):
    app = create_app(Settings(database_url=database_url_for(tmp_path / "review.db"), lab_name="Lab Hematologi Uji",
                              timezone="Asia/Tehran", differential_target=100),
                     analyzer=ReviewAnalyzer(cell_labels=True))
    with app.state.ctx.sessions() as db:
        add_user(db, "clara", "clara-password", "clinician")
        db.commit()
    with LiveServer(app) as url:
        yield url, app


def test_a_review_a_lab_can_sign_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, app = server
    files = {"field-a.jpg": field_bytes("Early", 21, size=160), "field-sure.png": png_with(SURE, smear("Pre", 22)),
             "rocket.png": png_with(ROCKET, rocket_photo())}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        dialogs: list[str] = []

        def accept(d):
            dialogs.append(d.message)
            d.accept()

        page.on("dialog", accept)

        page.goto(url + "/login")
        page.get_by_label("User name").fill("clara")
        page.get_by_label("Password").fill("clara-password")
        page.get_by_role("button", name="Log in").click()

        # accession and patient on the new-case form, the case page and the list (with its search)
        page.get_by_label("Smear reference").fill("S-2026-0777")
        page.get_by_label("Accession number").fill("A26-004711")
        page.get_by_label("Patient ID").fill("MRN 0012345")
        page.get_by_role("button", name="Create case").click()
        expect(page.locator("#case-accession")).to_have_text("A26-004711")
        expect(page.locator("#case-patient")).to_have_text("MRN 0012345")
        expect(page.locator(".case-head")).to_contain_text("(Asia/Tehran)")  # the lab's time zone, named
        case_url = page.url.split("?")[0]

        for i, name in enumerate(files, start=1):  # one by one: field numbers in this order
            page.locator("#file-input").set_input_files(str(tmp_path / name))
            expect(page.locator(".thumbs li")).to_have_count(i, timeout=30_000)
        page.goto(case_url)

        # the photo that is no smear: no call in words of morphology, "Unassessable" preselected
        page.locator(".thumbs li").nth(2).locator("a").click()
        expect(page.get_by_role("heading", name=re.compile(r"^Field 3 of 3"))).to_be_visible()
        body = page.locator(".viewer-body")
        expect(body.locator("#no-call")).to_contain_text("No class call")
        assert "consistent with" not in body.inner_text()
        expect(page.locator("#field-label")).to_have_value("unassessable")
        expect(page.locator("#field-save")).to_have_text("Mark the field unassessable")
        page.locator("#field-note").fill("photo of a rocket, not a smear")
        page.locator("#field-save").click()
        expect(page.get_by_text("Your decision for the field was saved.")).to_be_visible()
        page.goto(case_url + "?field=" + page.locator(".thumbs li").nth(2).get_attribute("id").split("-")[1])
        expect(page.locator("#field-review .signed")).to_contain_text("Marked unassessable")
        expect(page.locator("#unassessable-list")).to_contain_text("field 3")
        expect(page.locator("#unassessable-list")).to_contain_text("photo of a rocket")

        # the field the AI is sure about: "> 99 %", never "100 %" for a probability under 1
        page.locator(".thumbs li").nth(1).locator("a").click()
        expect(page.locator(".viewer-body .conf-val")).to_have_text("> 99 %")
        page.locator(".viewer-body summary", has_text="All class probabilities").click()
        expect(page.locator(".viewer-body .pval").first).to_be_visible()
        texts = page.locator(".conf-val, .pval").all_inner_texts()
        assert "> 99 %" in texts and "100 %" not in texts, texts
        assert "resized" not in page.locator(".viewer-body").inner_text().split("Technical details")[0]
        page.locator("#field-save").click()  # confirm field 2
        page.goto(case_url + "?field=" + page.locator(".thumbs li").nth(0).get_attribute("id").split("-")[1])
        page.locator("body").press("2")  # field 1: Early with the keyboard
        page.locator("#field-label").press("Enter")
        expect(page.locator("#reviewed-count")).to_have_text("3 of 3 fields reviewed")
        # "Needs attention" names fields by their number
        attention = page.locator("#needs-attention a")
        for i in range(attention.count()):
            a = attention.nth(i)
            fid = a.get_attribute("href").split("=")[1].split("#")[0]
            n = page.locator(".thumbs li").evaluate_all(
                "(lis, id) => lis.findIndex(li => li.id === 'field-' + id) + 1", fid)
            expect(a).to_have_text(f"Field {n}")

        # the gallery: crops at one scale, keyboard and mouse selection, one key moves, z undoes
        page.goto(case_url + "#gallery")
        expect(page.locator("#gallery-diff")).to_contain_text("AI pre-classification, not verified")
        expect(page.locator("#gallery-diff")).to_contain_text("of 100 leukocytes counted")
        expect(page.locator("#crop-scale")).to_contain_text("5 µm")
        cells = page.locator("figure.cell")
        n_cells = cells.count()
        assert n_cells >= 4
        assert page.locator("figure.cell img").first.get_attribute("width") == "120"
        before_n = int(page.locator("#diff-neutrophil").inner_text())
        # the moved cards change places (under their new group): found by id, not by position
        moved = page.locator("#" + cells.nth(0).get_attribute("id"))
        cells.first.focus()
        cells.first.press("Space")
        cells.first.press("Shift+ArrowRight")
        expect(page.locator("#selection-count")).to_have_text("2 cells selected")
        page.keyboard.press("n")
        expect(page.locator("#gallery-status")).to_contain_text("2 cells saved as Neutrophil")
        expect(page.locator("#diff-neutrophil")).to_have_text(str(before_n + 2))
        expect(moved.locator(".cell-label")).to_have_text("Moved to Neutrophil")
        page.keyboard.press("z")
        expect(page.locator("#gallery-status")).to_contain_text("Undone")
        expect(page.locator("#diff-neutrophil")).to_have_text(str(before_n))
        expect(moved.locator(".cell-label")).to_have_text("")
        page.keyboard.press("Escape")
        # the mouse: click, Shift-click a range; then one key for all of them
        unclassified = page.locator("#group-unclassified + .cells figure.cell")
        if unclassified.count():
            unclassified.first.click()
            unclassified.last.click(modifiers=["Shift"])
            expect(page.locator("#selection-count")).to_have_text(
                f"{unclassified.count()} cell{'s' if unclassified.count() > 1 else ''} selected")
            page.keyboard.press("l")
            expect(page.locator("#gallery-status")).to_contain_text("saved as Lymphocyte")
            expect(page.locator("#group-unclassified")).to_have_count(0)  # the group left empty goes at once
        page.reload()
        expect(page.locator("#group-unclassified")).to_have_count(0)  # every counted cell has a class now

        # verify the differential: it carries the reviewer's name and the lab's local time
        page.locator("#verify-differential").click()
        expect(page.get_by_text("The differential is verified in your name.")).to_be_visible()
        assert dialogs and "Verify the differential" in dialogs[-1]
        expect(page.locator("#diff-source")).to_contain_text("Verified by clara")
        expect(page.locator("#diff-source")).to_contain_text("(Asia/Tehran)")

        # sign off (fewer than 100 leukocytes: the warning says so, and must be acknowledged)
        expect(page.locator("#sign-off-warnings")).to_contain_text("Fewer than 100 leukocytes counted")
        assert "differential is not verified" not in page.locator("#sign-off-warnings").inner_text()
        page.get_by_label("Final call").select_option("Pre")
        page.get_by_label("I have seen these warnings").check()
        page.get_by_role("button", name=re.compile("^Sign off")).click()
        expect(page.get_by_text("The case is signed off.")).to_be_visible()

        # the lock answer is a short sentence inside the viewer, beside the reason box
        page.goto(case_url + "?field=" + page.locator(".thumbs li").nth(0).get_attribute("id").split("-")[1])
        page.locator("#field-label").select_option("Pro")
        page.locator("#field-save").click()
        err = page.locator("#viewer #field-error")
        expect(err).to_be_visible()
        expect(err).to_contain_text("signed off by clara")
        assert len(err.inner_text()) < 200 and not re.search(r"\d{4}-\d\d-\d\dT", err.inner_text())
        expect(page.locator("#field-amendment")).to_be_focused()
        page.locator("#field-amendment").fill("second look: blasts with nucleoli")
        page.locator("#field-save").click()
        expect(page.get_by_text("Your decision for the field was saved.")).to_be_visible()
        # a cell, amended from the gallery
        page.goto(case_url + "#gallery")
        page.locator("#cells-amendment").fill("cell 1 is a blast")
        first_id = page.locator("figure.cell").first.get_attribute("id")
        first = page.locator("#" + first_id)
        first.focus()
        first.press("b")
        expect(page.locator("#gallery-status")).to_contain_text("saved as Blast")
        # at once, in the server's words: the verification taken back, the blast percentage as the case answers it
        expect(page.locator("#diff-source")).to_contain_text("AI pre-classification with your changes, not verified "
                                                             "(changed since the last verification)")
        blasts = page.locator("#blast-percent").inner_text()
        assert re.fullmatch(r"\d+\.\d %", blasts), blasts
        expect(page.locator("#gallery-status")).to_contain_text(f"Blast percentage now {blasts}.")
        page.reload()
        expect(page.locator("#blast-percent")).to_have_text(blasts)
        rows = page.locator("#amendments table.changes tbody tr")
        field_row = rows.filter(has=page.locator("th", has_text=re.compile(r"^Field 1$")))
        expect(field_row).to_have_count(1)
        expect(field_row.locator("td.before")).to_contain_text("Early")
        expect(field_row.locator("td.after")).to_contain_text("Pro")
        _, fid, cid = first_id.split("-")
        cell_row = rows.filter(has_text=f"cell {cid}")
        expect(cell_row).to_have_count(1)
        expect(cell_row.locator("td.after")).to_contain_text(re.compile("blast", re.I))
        expect(rows.filter(has_text="Differential").locator("td.after")).to_contain_text("not verified")
        n_rows = rows.count()
        expect(page.locator("#amendments")).to_contain_text("second look: blasts with nucleoli")
        expect(page.locator("#amendments")).to_contain_text("(Asia/Tehran)")
        # moving a cell took the verification back
        expect(page.locator("#diff-source")).to_contain_text("AI pre-classification, not verified")

        # the report: accession, patient, unassessable fields, the differential's status, amendments in full
        page.get_by_role("link", name="Printable report").click()
        expect(page.locator("#report-accession")).to_have_text("A26-004711")
        expect(page.locator("#report-patient")).to_have_text("MRN 0012345")
        expect(page.locator("#report-unassessable")).to_contain_text("Field 3")
        expect(page.locator("#report-unassessable")).to_contain_text("photo of a rocket")
        expect(page.locator("#report-blasts")).to_contain_text("not verified")
        assert "(reviewer)" not in page.content()
        expect(page.locator(".report-amendments table.changes tbody tr")).to_have_count(n_rows)
        expect(page.locator(".report-fields")).to_contain_text("> 99 %")
        assert "Review each field before signing off" not in page.content()
        assert "100 %" not in page.locator(".report-fields").inner_text()
        browser.close()
    assert errors == [], errors


def test_a_case_call_that_is_not_confident_has_no_one_click_confirm(tmp_path):
    from fastapi.testclient import TestClient

    from webtools import login, make_test_app

    app, clin, _ = make_test_app(tmp_path, analyzer=ReviewAnalyzer())
    with TestClient(app) as client:
        cid = client.post("/api/v1/cases", headers=clin, json={"reference": "S-UNSURE"}).json()["id"]
        r = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                        files=[("files", ("unsure.png", png_with(UNSURE, smear("Early", 5)), "image/png"))])
        assert r.status_code == 201
        case = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
        assert case["ai"]["label"] == "Early" and case["ai"]["confident"] is False
        login(client)
        page = client.get(f"/cases/{cid}").text
        form = page[page.index('id="case-review-form"'):page.index("</form>", page.index('id="case-review-form"'))]
        assert "confirm the AI suggestion" not in form.split('data-confirm-text')[0]
        assert '<option value="" selected>— choose the class —</option>' in form
        assert ">Sign off: choose the class first</button>" in form and 'class="decide"' in form  # not primary
        assert "The AI is not confident about this case call" in page
        assert "30 %" in page  # the field's confidence, through the one helper


def _open_case_with_fields(p, url, tmp_path, files):
    """Chromium logged in as clara, on a new case with `files` ({name: bytes}) added; (browser, page, case URL)."""
    browser = launch_chromium(p)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/login")
    page.get_by_label("User name").fill("clara")
    page.get_by_label("Password").fill("clara-password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_label("Smear reference").fill("S-2026-0888")
    page.get_by_role("button", name="Create case").click()
    case_url = page.url.split("?")[0]
    for i, (name, data) in enumerate(files.items(), start=1):
        (tmp_path / name).write_bytes(data)
        page.locator("#file-input").set_input_files(str(tmp_path / name))
        page.locator(".thumbs li").nth(i - 1).wait_for(timeout=30_000)
    page.goto(case_url)
    return browser, page, case_url


def test_a_failed_sign_off_is_not_posted_again_on_reload(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser, page, case_url = _open_case_with_fields(p, url, tmp_path, {"f.png": png_with(SURE, smear("Pre", 31))})
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.locator("#case-note").fill("what I typed")
        page.get_by_role("button", name=re.compile("^Sign off")).click()  # the warnings are not acknowledged
        expect(page.locator("#case-error")).to_contain_text("There are warnings to read before sign-off")
        expect(page.locator("#case-note")).to_have_value("what I typed")  # what was typed is kept
        assert page.url == case_url, page.url
        assert len(posts) == 1
        page.reload()
        expect(page.locator("#case-review-form")).to_be_visible()
        expect(page.locator("#case-error")).to_have_count(0)
        assert len(posts) == 1, posts  # the reload did not post the form again
        browser.close()


def test_moved_cells_go_under_their_new_group_at_once_and_z_takes_them_back(server, tmp_path):
    """A class key puts the moved cards under the new class's heading (made if the page had none) with the counts
    in the headings updated, without a reload; the selection clears and the focus goes on to the card that followed
    them (work goes on down the group); the arrow keys follow the new order; z puts them back under their old group
    (and the group made for them goes), selected."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser, page, case_url = _open_case_with_fields(
            p, url, tmp_path, {"a.jpg": field_bytes("Early", 21, size=160), "b.jpg": field_bytes("Pro", 23, size=160)})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(case_url + "#gallery")
        page.evaluate("() => { window.notReloaded = true; }")

        def groups() -> dict[str, int]:  # {class: the count in its heading}
            return {h.get_attribute("id")[len("group-"):]: int(re.search(r"\((\d+)\)$", h.inner_text()).group(1))
                    for h in page.locator("h3.gallery-group").all()}

        def ids_under(cls: str) -> list[str]:
            return page.locator(f"#group-{cls} + .cells figure.cell").evaluate_all("cs => cs.map(c => c.id)")

        before = groups()
        assert all(n == len(ids_under(c)) for c, n in before.items()), before
        old = next((c for c, n in before.items() if n >= 2), None)
        assert old, before
        new, key = "monocyte", "m"  # a group the page has not got yet (the fake AI suggests no monocyte)
        assert new not in before
        a, b = ids_under(old)[:2]
        # the card that follows b in the page's order: the focus goes on to it after the move
        follower = page.locator("figure.cell").evaluate_all(
            "(cs, ids) => { const i = cs.findIndex(c => c.id === ids[1]); "
            "const rest = cs.slice(i + 1).filter(c => !ids.includes(c.id)); return rest.length ? rest[0].id : null; }",
            [a, b])
        page.locator("#" + a).click()
        page.locator("#" + b).click(modifiers=["Control"])
        expect(page.locator("#selection-count")).to_have_text("2 cells selected")
        page.keyboard.press(key)
        expect(page.locator("#gallery-status")).to_contain_text("2 cells saved as")
        expect(page.locator(f"#group-{new} + .cells").locator(f"#{a}, #{b}")).to_have_count(2)
        after = groups()
        assert after.get(new, 0) == before.get(new, 0) + 2, (before, after)
        assert after.get(old, 0) == before[old] - 2, (before, after)
        assert (old in after) == (before[old] > 2)  # a group left empty goes
        assert all(n == len(ids_under(c)) for c, n in after.items()), after
        # the new group where the page's order puts it (as a reload would): monocyte after blast and lymphocyte
        assert list(after) == [c for c in ("blast", "lymphocyte", "monocyte", "unclassified", "edge") if c in after]
        expect(page.locator('figure.cell[aria-selected="true"]')).to_have_count(0)
        expect(page.locator("#selection-count")).to_have_text("No cell selected")
        if follower:
            expect(page.locator("#" + follower)).to_be_focused()
        # the arrow keys walk the new order: from b to the card after it under its new group, or the next group's
        page.locator("#" + b).focus()
        nxt = page.locator("figure.cell").evaluate_all(
            "(cs, id) => { const i = cs.findIndex(c => c.id === id); return i + 1 < cs.length ? cs[i + 1].id : id; }", b)
        page.keyboard.press("ArrowRight")
        expect(page.locator("#" + nxt)).to_be_focused()
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#" + b)).to_be_focused()

        page.keyboard.press("z")
        expect(page.locator("#gallery-status")).to_contain_text("Undone")
        expect(page.locator(f"#group-{old} + .cells").locator(f"#{a}, #{b}")).to_have_count(2)
        assert groups() == before
        assert ids_under(old)[:2] == [a, b]  # back in their places
        expect(page.locator('figure.cell[aria-selected="true"]')).to_have_count(2)
        assert page.evaluate("() => window.notReloaded === true")  # all without a reload
        browser.close()
    assert errors == [], errors
