"""A hematologist's review in Chromium, with screenshots: the README's docs/screenshot.png and, with --walkthrough,
one small PNG per step of issue 22 under docs/results/issue22-walkthrough/ (and facts.json: what the pages said).

Runs a real server with the bundled models (the fake test analyzer only with --fake, and the pages then say
"Test mode"), on real Taleqani fields from ../shared/data/all-taleqani when present (else synthetic fields),
one field of another lab's microscope (../shared/data/raabin-fields) when present, and a made-up photo of a
rocket (no smear at all).

    .venv/bin/python scripts/review_walkthrough.py                 # docs/screenshot.png only
    .venv/bin/python scripts/review_walkthrough.py --walkthrough   # and the walkthrough's screenshots
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test support (a live server, a fake analyser) lives in tests/

from leukodx.web.app import create_app  # noqa: E402
from leukodx.web.auth import add_user  # noqa: E402
from leukodx.web.settings import Settings, database_url_for  # noqa: E402
from webtools import FakeAnalyzer, LiveServer, exclude_cells_without_an_ai_class, field_bytes, launch_chromium  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TALEQANI = DATA / "all-taleqani" / "Original"
OTHER_LAB = DATA / "raabin-fields" / "images"


def rocket_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A made-up photo of a rocket against a sky (no blood smear at all)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([40, 90, 180]) * (1 - y) + np.array([150, 200, 240]) * y) * np.ones((1, width, 1))
    im = Image.fromarray(sky.astype("uint8"))
    d = ImageDraw.Draw(im)
    cx = width // 2
    d.rectangle((cx - 28, 140, cx + 28, 370), fill=(235, 235, 240), outline=(90, 90, 100), width=3)
    d.polygon([(cx - 28, 140), (cx, 60), (cx + 28, 140)], fill=(200, 40, 40))
    d.polygon([(cx - 28, 300), (cx - 70, 380), (cx - 28, 370)], fill=(200, 40, 40))
    d.polygon([(cx + 28, 300), (cx + 70, 380), (cx + 28, 370)], fill=(200, 40, 40))
    d.ellipse((cx - 14, 190, cx + 14, 218), fill=(60, 120, 200), outline=(40, 40, 60), width=3)
    d.polygon([(cx - 22, 372), (cx, 460), (cx + 22, 372)], fill=(255, 170, 20))
    d.rectangle((0, 440, width, height), fill=(90, 110, 70))
    im = im.filter(ImageFilter.GaussianBlur(1.2))
    noise = np.random.default_rng(0).normal(0, 4, (height, width, 3))
    im = Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype("uint8"))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def fields(tmp: Path, walkthrough: bool) -> list[Path]:
    """Real fields (one per class, a hidden-looking index) or synthetic ones; the walkthrough adds another lab's
    field and the rocket."""
    out = []
    for i, label in enumerate(("Pro", "Early", "Benign", "Pre") if walkthrough else ("Pro", "Early", "Benign")):
        candidates = sorted((TALEQANI / label).glob("*.jpg"))[7:8] if (TALEQANI / label).is_dir() else []
        p = tmp / f"field-{i + 1}-{label.lower()}.jpg"
        p.write_bytes(candidates[0].read_bytes() if candidates else field_bytes(label, 40 + i, size=224))
        out.append(p)
    if walkthrough:
        other = sorted(OTHER_LAB.glob("*.jpg"))[3:4] if OTHER_LAB.is_dir() else []
        if other:
            p = tmp / "other-lab.jpg"
            p.write_bytes(other[0].read_bytes())
            out.append(p)
        p = tmp / "rocket.jpg"
        p.write_bytes(rocket_jpeg())
        out.append(p)
    return out


def small_png(png: bytes, path: Path, width: int = 900) -> None:
    """A screenshot, scaled to at most `width` pixels and reduced to 256 colours (small files)."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--walkthrough", action="store_true", help="Also the issue-22 walkthrough's screenshots.")
    ap.add_argument("--shots", default=str(ROOT / "docs" / "results" / "issue22-walkthrough"))
    ap.add_argument("--fake", action="store_true", help="Use the fake analyzer instead of the bundled models.")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="leukodx-walk-"))
    shots = Path(args.shots)
    if args.walkthrough:
        shots.mkdir(parents=True, exist_ok=True)
    facts: dict[str, object] = {}
    app = create_app(Settings(database_url=database_url_for(tmp / "walk.db"), timezone="Asia/Tehran",
                              lab_name="Haematology laboratory, Taleqani Hospital",
                              lab_address="Velenjak, Tehran"),
                     analyzer=FakeAnalyzer(cell_labels=True) if args.fake else None)
    with app.state.ctx.sessions() as db:
        add_user(db, "dr.amini", "walkthrough-password", "clinician")
        db.commit()

    def shot(page, name: str, locator=None, full: bool = False) -> None:
        if not args.walkthrough:
            return
        png = locator.screenshot() if locator is not None else page.screenshot(full_page=full)
        small_png(png, shots / f"{name}.png")

    with LiveServer(app) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        page.on("dialog", lambda d: d.accept())
        page.goto(url + "/login")
        page.get_by_label("User name").fill("dr.amini")
        page.get_by_label("Password").fill("walkthrough-password")
        page.get_by_role("button", name="Log in").click()

        # 5: accession and patient on the form
        page.get_by_label("Smear reference").fill("S-2026-0113")
        page.get_by_label("Accession number").fill("A26-004711")
        page.get_by_label("Patient ID").fill("MRN 0012345")
        page.get_by_label("Stain").fill("Wright-Giemsa")
        shot(page, "01-new-case-form", page.locator("#new-case-form"))
        page.get_by_role("button", name="Create case").click()
        expect(page.get_by_text("Case created.")).to_be_visible()
        case_url = page.url.split("?")[0]
        deadline = time.time() + 180
        while not app.state.ctx.service.ready and time.time() < deadline:
            time.sleep(0.5)
        files = fields(tmp, args.walkthrough)
        for i, f in enumerate(files, start=1):  # one by one: the field numbers follow the list
            page.locator("#file-input").set_input_files(str(f))
            expect(page.locator(".thumbs li")).to_have_count(i, timeout=180_000)
        page.goto(case_url)
        if not args.walkthrough:  # the README's picture: the case head, its summary and the field viewer
            page.wait_for_timeout(500)
            top = page.locator(".case-head").bounding_box()
            bottom = page.locator("#viewer .viewer-body").bounding_box()
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            png = page.screenshot(full_page=True, clip={"x": 0, "y": top["y"] - 10, "width": 1360,
                                                        "height": bottom["y"] + bottom["height"] - top["y"] + 20})
            small_png(png, Path(args.out), width=1100)
            browser.close()
            print(f"wrote {args.out} ({'FAKE analyzer' if args.fake else 'bundled models'})")
            return

        import httpx

        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        api = httpx.Client(base_url=url, cookies=cookies)
        cid = case_url.rsplit("/", 1)[1]
        case = api.get(f"/api/v1/cases/{cid}").json()
        facts["fields"] = [{"number": f["number"], "name": f["name"], "label": f["label"], "confidence": f["confidence"],
                            "flag": f["flag"], "cells": f["cell_count"], "decision_suggested": f["decision_suggested"]}
                           for f in case["fields"]]
        facts["ai"] = {k: case["ai"][k] for k in ("label", "confidence", "confident")}

        # 5: the list and its search by patient ID
        page.goto(url + "/cases?q=0012345")
        shot(page, "02-case-list-search", page.locator("section[aria-labelledby=list]"))
        facts["list_search_rows"] = page.locator("table.cases tbody tr").count()

        # 3: the case summary: "Needs attention" by field number, confidence words, the differential's status
        page.goto(case_url)
        shot(page, "03-case-summary", page.locator("#review"))
        facts["needs_attention"] = page.locator("#needs-attention li").all_inner_texts()
        facts["sign_off_button"] = page.locator("#sign-off").inner_text()
        facts["diff_source"] = page.locator("#diff-source").inner_text()

        # 2: the rocket: no class call, "Unassessable" preselected
        rocket = next(f for f in case["fields"] if f["name"].startswith("rocket"))
        page.goto(f"{case_url}?field={rocket['id']}#viewer")
        body = page.locator(".viewer-body")
        facts["rocket"] = {"select": page.locator("#field-label").input_value(), "button": page.locator(
            "#field-save").inner_text(), "says_consistent_with": "consistent with" in body.inner_text(),
            "text": page.locator("#no-call").inner_text() if page.locator("#no-call").count() else None}
        shot(page, "04-rocket-unassessable", page.locator("#viewer"))
        page.locator("#field-note").fill("photo of a rocket, not a blood smear")
        page.locator("#field-save").click()
        expect(page.get_by_text("Your decision for the field was saved.")).to_be_visible()

        # 3: the field the AI is surest about: its confidence through the one helper
        sure = max((f for f in case["fields"] if f["label"]), key=lambda f: f["confidence"])
        page.goto(f"{case_url}?field={sure['id']}#viewer")
        page.locator(".viewer-body summary", has_text="All class probabilities").click()
        page.locator("#tech-details summary").click()
        facts["surest_field"] = {"number": sure["number"], "confidence": sure["confidence"],
                                 "shown": page.locator(".viewer-body .conf-val").inner_text(),
                                 "probabilities_shown": page.locator(".viewer-body .pval").all_inner_texts(),
                                 "tech_details": page.locator("#tech-details").inner_text()}
        shot(page, "05-confidence-and-details", page.locator(".viewer-body"))

        # review the remaining fields: confirm the unflagged ones, the flagged ones with the keyboard
        if page.locator("#confirm-unflagged:not([disabled])").count():
            page.locator("#confirm-unflagged").click()
        for _ in range(len(files)):
            todo = [f for f in api.get(f"/api/v1/cases/{cid}").json()["fields"] if not f["review"]["decision"]]
            if not todo:
                break
            page.goto(f"{case_url}?field={todo[0]['id']}#viewer")
            page.locator("#field-save").click()
            page.wait_for_load_state()

        # 6: the gallery: select with the keyboard, move with one key, undo
        page.goto(case_url + "#gallery")
        page.locator("#gallery").scroll_into_view_if_needed()
        cells = page.locator("figure.cell")
        facts["gallery"] = {"cells": cells.count(), "groups": page.locator("h3.gallery-group").all_inner_texts(),
                            "scale_caption": page.locator("#crop-scale").inner_text()}
        t0 = time.time()
        cells.first.focus()
        cells.first.press("Space")
        cells.first.press("Shift+ArrowRight")
        cells.nth(1).press("Shift+ArrowRight")
        page.evaluate("() => window.scrollTo(0, document.getElementById('gallery').offsetTop - 10)")
        shot(page, "06-gallery-selected")
        page.keyboard.press("l")
        expect(page.locator("#gallery-status")).to_contain_text("saved as")
        facts["gallery"]["move_status"] = page.locator("#gallery-status").inner_text()
        facts["gallery"]["move_seconds"] = round(time.time() - t0, 2)
        shot(page, "07-gallery-moved")
        page.keyboard.press("z")
        expect(page.locator("#gallery-status")).to_contain_text("Undone")
        facts["gallery"]["undo_status"] = page.locator("#gallery-status").inner_text()
        shot(page, "08-gallery-crops", page.locator("#gallery .cells").first)
        # the cells the AI left unidentified or unclassified need a decision (else the differential cannot be
        # verified): here they are excluded, selected with the mouse
        exclude_cells_without_an_ai_class(page)
        # 1: verify the differential
        page.locator("#verify-differential").click()
        page.wait_for_url(re.compile(r"done=differential-verified"), timeout=20_000)
        facts["verified"] = page.locator("#diff-source").inner_text()
        shot(page, "09-differential-verified", page.locator("#review"))
        facts["warnings_before_sign_off"] = page.locator("#sign-off-warnings li").all_inner_texts() if page.locator(
            "#sign-off-warnings").count() else []

        # sign off
        page.get_by_label("Final call").select_option("Pro")
        if page.locator("#acknowledge").count():
            page.locator("#acknowledge").check()
        page.locator("#sign-off").click()
        expect(page.get_by_text("The case is signed off.")).to_be_visible()

        # 4: a change without a reason: a short sentence inside the viewer, then with a reason
        first = case["fields"][0]
        page.goto(f"{case_url}?field={first['id']}#viewer")
        page.locator("#field-label").select_option("Pre")
        page.locator("#field-save").click()
        facts["lock_sentence"] = page.locator("#field-error").inner_text()
        shot(page, "10-lock-inside-viewer", page.locator("#field-review"))
        page.locator("#field-amendment").fill("second look: L2 blasts, pre-B pattern")
        page.locator("#field-save").click()
        page.goto(case_url + "#gallery")
        page.locator("#cells-amendment").fill("cell reclassified on second look")
        cells = page.locator("figure.cell")
        cells.first.focus()
        cells.first.press("n")
        expect(page.locator("#gallery-status")).to_contain_text("saved as")
        page.goto(case_url + "#amendments")
        page.reload()  # the same page with another fragment: load it again
        facts["amendments"] = page.locator("#amendments table.changes tbody tr").all_inner_texts()
        shot(page, "11-amendments", page.locator("#amendments"))

        # the report
        page.goto(case_url + "/report")
        shot(page, "12-report", full=True)
        facts["report_blasts"] = page.locator("#report-blasts").inner_text()
        facts["report_unassessable"] = page.locator("#report-unassessable").inner_text()
        facts["report_has_reviewer_tag"] = "(reviewer)" in page.content()
        facts["report_says_review_each_field"] = "Review each field before signing off" in page.content()
        facts["report_100_percent"] = re.findall(r"\b100 %", page.locator(".report-fields").inner_text())
        browser.close()
    (shots / "facts.json").write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(facts, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
