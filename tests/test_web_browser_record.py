"""The record and the small things of issue 31 in a real browser (Chromium via Playwright), at a common clinic
screen of 1366 x 768: the search box's placeholder fits, fields are numbered in the order chosen, the AI's call
and flag are in view beside the image, bulk confirmation lists each call and asks once, the gallery's count
follows the moves, a move that takes back the verification says so and offers it again, and after the last
field the page says every field is reviewed."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from leukodx.web.cells import KEYS
from test_web_record import MarkedAnalyzer, field_png
from webtools import LiveServer, browser_marks, launch_chromium, make_test_app

pytestmark = browser_marks()
EXCLUDE_KEY = next(k for k, c in KEYS.items() if c == "excluded")


class SlowFirstAnalyzer(MarkedAnalyzer):
    """An image named a-slow* takes a while to analyse (a large field), so it finishes after the ones chosen
    after it when uploads overlap."""

    def analyze(self, image, *, name=None, heatmap=False):
        if name and name.startswith("a-slow"):
            time.sleep(2.0)
        return super().analyze(image, name=name, heatmap=heatmap)


@pytest.fixture()
def server(tmp_path):
    app, clin, _ = make_test_app(tmp_path, SlowFirstAnalyzer(), analysis_workers=2)
    with LiveServer(app) as url, httpx.Client(base_url=url, headers=clin, timeout=60) as api:
        yield url, api


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 768 and box["x"] + box["width"] <= 1366


def test_the_record_and_the_small_things_at_1366_by_768(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, api = server
    names = ["a-slow.png", "b.png", "c.png", "d.png"]
    for name, label in zip(names, ["Pre", "Benign", "Early", "Pro"], strict=True):
        (tmp_path / name).write_bytes(field_png(label, len(name), size=320))
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        page.goto(url + "/login")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill("alice-password")
        page.get_by_role("button", name="Log in").click()

        # the search box shows its whole placeholder
        fits = page.evaluate("""() => { const el = document.getElementById('q'), s = getComputedStyle(el);
            const c = document.createElement('canvas').getContext('2d'); c.font = s.font;
            return c.measureText(el.placeholder).width <= el.clientWidth - parseFloat(s.paddingLeft)
                   - parseFloat(s.paddingRight); }""")
        assert fits
        page.get_by_label("Smear reference").fill("S-31-0001")
        page.get_by_role("button", name="Create case").click()
        case_url = page.url.split("?")[0]
        cid = int(case_url.rsplit("/", 1)[1])

        # four files chosen at once: numbered in the order chosen, though the first finishes last
        page.locator("#file-input").set_input_files([str(tmp_path / n) for n in names])
        expect(page.locator(".thumbs li")).to_have_count(4, timeout=60_000)
        case = api.get(f"/api/v1/cases/{cid}").json()
        assert [f["name"] for f in case["fields"]] == names

        # the AI's call and flag beside the image, in view without scrolling
        flagged = case["fields"][2]
        page.goto(f"{case_url}?field={flagged['id']}#viewer")
        for sel in (".viewer-body .call", ".viewer-body .badge", ".viewer-body .flag-reason"):
            assert in_view(page, sel), (sel, page.locator(sel).first.bounding_box())
        # the flagged field's call box shows its whole first line (no call chosen yet)
        fits = page.evaluate("""() => { const el = document.getElementById('field-label'), s = getComputedStyle(el);
            const c = document.createElement('canvas').getContext('2d'); c.font = s.font;
            return c.measureText(el.options[el.selectedIndex].text).width <= el.clientWidth - 40; }""")
        assert fits

        # bulk confirmation: the list, the malignant calls named, one question
        page.locator("#confirm-unflagged").click()
        listed = page.locator("#confirm-unflagged-list li")
        expect(listed).to_have_count(3)
        expect(listed.nth(0)).to_contain_text("Field 1 (a-slow.png): Pre")
        expect(listed.nth(0)).to_contain_text("malignant call")
        expect(listed.nth(1)).not_to_contain_text("malignant")
        expect(page.locator("#confirm-unflagged-go")).to_have_text(
            "Confirm these 3 field calls, malignant in field 1, 4")
        page.locator("#confirm-unflagged-go").click()
        expect(page.locator(".notice")).to_contain_text("confirmed for 3 unflagged fields")
        assert [f["review"]["basis"] for f in api.get(f"/api/v1/cases/{cid}").json()["fields"]] == [
            "confirmed_ai", "confirmed_ai", None, "confirmed_ai"]

        # the gallery: verify, then a move that changes the count takes it back, says so and offers it again
        page.goto(case_url + "#gallery")
        page.locator("#verify-differential").click()
        expect(page.locator(".notice")).to_contain_text("verified in your name")
        header = page.locator("#gallery-diff .n-counted")
        before = int(header.inner_text())
        page.locator("#gallery-cells figure.cell:not(.not-counted)").first.click()
        page.keyboard.press(EXCLUDE_KEY)
        status = page.locator("#gallery-status")
        expect(status).to_contain_text("took back the differential's verification")
        expect(status).to_have_class(re.compile(r"\bwarn-text\b"))  # a warning, not a plain status line
        expect(page.locator("#verify-differential")).to_have_text("Verify the differential again")
        after = api.get(f"/api/v1/cases/{cid}").json()
        assert after["n_cells_counted"] == before - 1 and not after["differential_verified"]
        expect(header).to_have_text(str(after["n_cells_counted"]))
        expect(page.locator("#n-counted")).to_have_text(str(after["n_cells_counted"]))

        # the last field to review: the page says every field is reviewed, not "the next field"
        page.goto(f"{case_url}?field={flagged['id']}#viewer")
        page.locator("#field-label").select_option("Early")
        page.locator("#field-save").click()
        expect(page.locator(".notice")).to_contain_text("Every field is reviewed now")
        assert "next field to review" not in page.locator(".notice").inner_text()
        assert re.search(r"4 of 4 fields reviewed", page.locator("#reviewed-count").inner_text())
        # verified again, then a field added: the page it reloads to says the verification was taken back
        page.goto(case_url + "#gallery")
        page.locator("#verify-differential").click()
        expect(page.locator(".notice")).to_contain_text("verified in your name")
        (tmp_path / "e.png").write_bytes(field_png("Pre", 99, size=320))
        page.locator("#file-input").set_input_files(str(tmp_path / "e.png"))
        expect(page.locator(".notice")).to_contain_text("took back the differential's verification", timeout=30_000)
        expect(page.locator("#gallery-status")).to_contain_text("Verify the differential again")
        assert not errors, errors
        browser.close()
