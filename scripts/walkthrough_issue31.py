"""Issue 31's fresh-eyes walkthrough in Chromium at 1366 x 768, against a RUNNING server (the one `make run` starts
on a fresh clone): a lab technologist and a hematologist, one case of 12 fields from four labs and one photo that
is no smear. Writes small PNGs and facts.json (what the pages, the printed PDF and the exports said) to --out.

    git clone <repo> /tmp/walk-clone && cd /tmp/walk-clone && HOME=/tmp/walk-home make run &   # demo / demo
    HOME=/tmp/walk-home /tmp/walk-clone/.venv/bin/leukodx user add tech --password-stdin <<< tech-password
    .venv/bin/python scripts/walkthrough_issue31.py --url http://127.0.0.1:8000

The technologist (tech) creates the case, uploads, reviews the flagged fields with the keyboard and checks the
cells in the gallery; the hematologist (demo) confirms the unflagged fields in bulk, reviews the last field,
verifies the differential, signs off, amends one cell, verifies again, prints the report and exports CSV and FHIR.
Needs the data under ../shared/data (Taleqani, Raabin, Chula, PBC); the photo is made up (scripts/review_walkthrough).
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
from review_walkthrough import rocket_jpeg, small_png  # noqa: E402

from webtools import exclude_cells_without_an_ai_class, launch_chromium  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
W, H = 1366, 768


def pick_fields(tmp: Path, data: Path) -> list[Path]:
    """12 fields from four labs in a fixed order (the order chosen), then the photo of a rocket."""
    global DATA
    DATA = data
    chosen: list[tuple[str, Path]] = []
    for label in ("Pro", "Benign", "Early", "Pre"):
        chosen.append((f"taleqani-{label.lower()}", sorted((DATA / "all-taleqani/Original" / label).glob("*.jpg"))[7]))
    for i, p in enumerate(sorted((DATA / "raabin-fields/images").glob("*.jpg"))[3:6]):
        chosen.append((f"raabin-{i + 1}", p))
    for i, p in enumerate(sorted((DATA / "chula-wbc/images").glob("*.jpg"))[10:13]):
        chosen.append((f"chula-{i + 1}", p))
    for kind in ("lymphocyte", "neutrophil"):
        chosen.append((f"pbc-{kind}", sorted((DATA / "pbc" / kind).glob("*.jpg"))[5]))
    out = []
    for i, (name, src) in enumerate(chosen, start=1):
        p = tmp / f"{i:02d}-{name}.jpg"
        p.write_bytes(src.read_bytes())
        out.append(p)
    rocket = tmp / "13-rocket.jpg"
    rocket.write_bytes(rocket_jpeg())
    return out + [rocket]


def in_view(page, selector: str) -> bool:
    loc = page.locator(selector)
    if not loc.count():
        return False
    box = loc.first.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= H and box["x"] + box["width"] <= W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "issue31-walkthrough"))
    ap.add_argument("--tech", default="tech:tech-password", help="the technologist's user:password")
    ap.add_argument("--data", default=str(DATA), help="the shared data folder (Taleqani, Raabin, Chula, PBC)")
    ap.add_argument("--hema", default="demo:demo", help="the hematologist's user:password")
    args = ap.parse_args()
    import httpx
    import pypdf
    from playwright.sync_api import expect, sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="leukodx-walk31-"))
    files = pick_fields(tmp, Path(args.data))
    facts: dict = {"url": args.url, "viewport": [W, H], "files_chosen": [f.name for f in files]}
    dialogs: list[str] = []
    errors: list[str] = []

    def shot(page, name: str, locator=None, full: bool = False) -> None:
        png = locator.screenshot() if locator is not None else page.screenshot(full_page=full)
        small_png(png, out / f"{name}.png", width=1000)

    def login(browser, who: str):
        user, password = who.split(":", 1)
        page = browser.new_page(viewport={"width": W, "height": H}, device_scale_factor=1)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(args.url + "/login")
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_load_state()
        return page

    def api_for(page) -> httpx.Client:
        return httpx.Client(base_url=args.url, timeout=60,
                            cookies={c["name"]: c["value"] for c in page.context.cookies()})

    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            # ---------------- the technologist ----------------
            tech = login(browser, args.tech)
            stamp = time.strftime("%H%M%S")  # a new case each run
            ref, acc, mrn = f"S-31-{stamp}", f"A26-{stamp}", f"MRN 31{stamp}"
            facts["case_ids"] = [ref, acc, mrn]
            fits = tech.evaluate("""() => { const el = document.getElementById('q'); if (!el) return null;
                const s = getComputedStyle(el), c = document.createElement('canvas').getContext('2d'); c.font = s.font;
                return [el.placeholder, c.measureText(el.placeholder).width <= el.clientWidth
                        - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight)]; }""")
            facts["search_placeholder"] = fits
            tech.get_by_label("Smear reference").fill(ref)
            tech.get_by_label("Accession number").fill(acc)
            tech.get_by_label("Patient ID").fill(mrn)
            tech.get_by_label("Stain").fill("May-Grünwald-Giemsa")
            shot(tech, "01-new-case-1366")
            tech.get_by_role("button", name="Create case").click()
            expect(tech.get_by_text("Case created.")).to_be_visible()
            case_url = tech.url.split("?")[0]
            cid = case_url.rsplit("/", 1)[1]
            api = api_for(tech)
            t0 = time.time()
            tech.locator("#file-input").set_input_files([str(f) for f in files])  # all at once, as a user does
            expect(tech.locator(".uploads")).to_contain_text("All uploads finished", timeout=600_000)
            try:  # the page reloads itself a moment later, to show the results
                facts["upload_lines"] = tech.locator(".uploads li").all_inner_texts()
            except Exception:  # noqa: BLE001 - it reloaded first
                facts["upload_lines"] = None
            deadline = time.time() + 900
            while time.time() < deadline:
                case = api.get(f"/api/v1/cases/{cid}").json()
                if len(case["fields"]) == len(files):
                    break
                time.sleep(2)
            facts["upload_all_seconds"] = round(time.time() - t0, 1)
            facts["numbered_as_chosen"] = [f["name"] for f in case["fields"]] == [f.name for f in files]
            facts["fields"] = [{"number": i, "name": f["name"], "ai": f["label"], "confidence": f["confidence"],
                                "flag": f["flag"], "cells": f["cell_count"]} for i, f in enumerate(case["fields"], 1)]
            facts["case_ai"] = {k: case["ai"][k] for k in ("label", "confidence", "confident")}

            # a second case with the same accession number (another reference): what the question says; not made
            tech.goto(args.url + "/cases")
            tech.get_by_label("Smear reference").fill(ref + "-B")
            tech.get_by_label("Accession number").fill(acc)
            tech.get_by_role("button", name="Create case").click()
            tech.wait_for_load_state()
            facts["duplicate_accession"] = {
                "warning": tech.locator("#duplicate-warning").inner_text() if tech.locator(
                    "#duplicate-warning").count() else None,
                "button": tech.locator("#new-case-form button[type=submit]").inner_text()}

            # before any review: the summary (unassessable list, needs attention)
            tech.goto(case_url)
            tech.wait_for_load_state()
            ua = tech.locator("#unassessable-list")
            facts["unassessable_before_review"] = ua.inner_text() if ua.count() else None
            facts["needs_attention_before_review"] = tech.locator("#needs-attention li").all_inner_texts()
            box = tech.locator("#review").bounding_box()  # its first screen and a half: the AI's call, the flags
            small_png(tech.screenshot(full_page=True, clip={"x": box["x"], "y": box["y"], "width": box["width"],
                                                            "height": min(box["height"], 1100)}),
                      out / "02-summary-before-review.png", width=900)

            # the viewer at 1366 x 768: the AI's call and flag in view
            fields = case["fields"]
            flagged = [f for f in fields if f["flag"] != "ok" and f["label"]]
            first_flagged = flagged[0] if flagged else fields[0]
            tech.goto(f"{case_url}?field={first_flagged['id']}#viewer")
            tech.wait_for_load_state()
            facts["viewer_conf_bar"] = tech.locator(".viewer-body .conf-fill").first.get_attribute("class") \
                if tech.locator(".viewer-body .conf-fill").count() else None
            facts["viewer_in_view"] = {sel: in_view(tech, sel) for sel in (
                ".viewer-body .call", ".viewer-body .badge", ".viewer-body .flag-reason", "#field-save")}
            shot(tech, "03-viewer-1366")

            # the technologist reviews the flagged fields with the keyboard (all but the last, left for the
            # hematologist) and the rocket: pick a digit, Enter
            classes = [o for o in tech.locator("#field-label option").evaluate_all(
                "os => os.map(o => o.value)") if o and o != "unassessable"]
            facts["classes"] = classes
            keyboard = [f for f in fields if f["flag"] != "ok"]
            later = next((f for f in reversed(keyboard) if f["label"]), None)  # the hematologist's, last of all
            tech_basis = []
            for f in keyboard:
                if later is not None and f["id"] == later["id"]:
                    continue
                tech.goto(f"{case_url}?field={f['id']}#viewer")
                tech.wait_for_load_state()
                if f["label"]:
                    tech.keyboard.press(str(classes.index(f["label"]) + 1))  # the reviewer's own call, same as AI
                else:
                    tech.keyboard.press(str(len(classes) + 1))
                    tech.locator("#field-note").fill("not a blood smear")
                    tech.locator("#field-label").focus()
                with tech.expect_navigation():
                    tech.keyboard.press("Enter")
                tech.goto(f"{case_url}?field={f['id']}#viewer")
                tech_basis.append({"field": fields.index(f) + 1, "shown": tech.locator("#field-basis").inner_text()})
            facts["tech_field_reviews"] = tech_basis
            if tech_basis:
                own = next((f for f in keyboard if f["label"] and (later is None or f["id"] != later["id"])), None)
                if own is not None:
                    tech.goto(f"{case_url}?field={own['id']}#viewer")
                    shot(tech, "04-reviewer-own-call", tech.locator("#field-review"))

            # the gallery: a move, the count line, undo
            tech.goto(case_url + "#gallery")
            tech.wait_for_load_state()
            n_counted = tech.locator("#gallery-diff .n-counted")
            g = {"diff_line": tech.locator("#gallery-diff").inner_text(), "n_before": n_counted.first.inner_text()}
            cell = tech.locator("#gallery-cells figure.cell:not(.not-counted)").first
            cell.focus()
            group = cell.get_attribute("data-group")
            key = "x"  # exclude: the count changes by one
            tech.keyboard.press(key)
            expect(tech.locator("#gallery-status")).to_contain_text("saved as")
            g["moved_from"] = group
            g["move_status"] = tech.locator("#gallery-status").inner_text()
            g["n_after_move"] = n_counted.first.inner_text()
            g["n_after_move_api"] = api.get(f"/api/v1/cases/{cid}").json()["n_cells_counted"]
            g["summary_n_after_move"] = tech.locator("#n-counted").inner_text() if tech.locator("#n-counted").count() \
                else None
            tech.evaluate("() => window.scrollTo(0, document.getElementById('gallery').offsetTop - 10)")
            shot(tech, "05-gallery-moved")
            tech.keyboard.press("z")
            expect(tech.locator("#gallery-status")).to_contain_text("Undone")
            g["undo_status"] = tech.locator("#gallery-status").inner_text()
            g["n_after_undo"] = n_counted.first.inner_text()
            g["n_after_undo_api"] = api.get(f"/api/v1/cases/{cid}").json()["n_cells_counted"]
            exclude_cells_without_an_ai_class(tech)  # cells without an AI class: excluded by the tech
            g["groups"] = tech.locator("h3.gallery-group").all_inner_texts()
            facts["gallery"] = g
            tech.close()

            # ---------------- the hematologist ----------------
            hema = login(browser, args.hema)
            api = api_for(hema)
            hema.goto(case_url)
            hema.wait_for_load_state()
            bulk = hema.locator("#confirm-unflagged")
            if bulk.count():
                bulk.click()
                facts["bulk_list"] = hema.locator("#confirm-unflagged-list li").all_inner_texts()
                facts["bulk_button"] = hema.locator("#confirm-unflagged-go").inner_text()
                shot(hema, "06-confirm-unflagged-list", hema.locator("#confirm-unflagged-step"))
                hema.locator("#confirm-unflagged-go").click()
                hema.wait_for_load_state()
                facts["bulk_notice"] = hema.locator(".notice").first.inner_text() if hema.locator(".notice").count() \
                    else None
            if later is not None:  # the last field to review: the hematologist's own call (another class)
                hema.goto(f"{case_url}?field={later['id']}#viewer")
                hema.wait_for_load_state()
                other = next(c for c in classes if c != later["label"])
                hema.keyboard.press(str(classes.index(other) + 1))
                with hema.expect_navigation():
                    hema.keyboard.press("Enter")
                facts["last_field_notice"] = hema.locator(".notice").first.inner_text() if hema.locator(
                    ".notice").count() else None
                facts["reviewed_count"] = hema.locator("#reviewed-count").inner_text()
            hema.goto(case_url + "#gallery")
            hema.wait_for_load_state()
            with hema.expect_navigation():  # after the question (a dialog, accepted)
                hema.locator("#verify-differential").click()
            facts["verify_notice"] = hema.locator(".notice").first.inner_text() if hema.locator(".notice").count() \
                else None
            facts["diff_after_verify"] = hema.locator("#gallery-diff").inner_text()
            facts["sign_off_warnings"] = hema.locator("#sign-off-warnings li").all_inner_texts()
            facts["sign_off_select_default"] = hema.locator("#case-label").input_value()
            facts["sign_off_button"] = hema.locator("#sign-off").inner_text()
            call = facts["sign_off_select_default"] or case["ai"]["label"] or classes[0]
            hema.locator("#case-label").select_option(call)
            hema.locator("#case-note").fill("Walkthrough case (issue 31): fields of four labs, not one patient.")
            if hema.locator("#acknowledge").count():
                hema.locator("#acknowledge").check()
            hema.locator("#sign-off").click()
            expect(hema.get_by_text("The case is signed off.")).to_be_visible()
            facts["signed"] = hema.locator(".review-box .signed").first.inner_text()
            facts["locked_summary_before_upload_box"] = hema.evaluate("""() => !!(document.getElementById('review')
                .compareDocumentPosition(document.getElementById('upload-box')) & Node.DOCUMENT_POSITION_FOLLOWING)""")
            shot(hema, "07-signed-off", hema.locator("#review"))

            # the amendment: one cell moved after sign-off; the withdrawn verification said aloud; verify again
            hema.goto(case_url + "#gallery")
            hema.wait_for_load_state()
            hema.locator("#cells-amendment").fill("second look: one cell is a smudge")
            c = hema.locator("#gallery-cells figure.cell:not(.not-counted)").first
            c.focus()
            hema.keyboard.press("s")
            expect(hema.locator("#gallery-status")).to_contain_text("verif", timeout=20_000)
            facts["amend_status"] = hema.locator("#gallery-status").inner_text()
            facts["amend_status_class"] = hema.locator("#gallery-status").get_attribute("class")
            facts["amend_reason_box_shows_whole"] = hema.locator("#cells-amendment").evaluate(
                "el => el.scrollWidth <= el.clientWidth")
            facts["amend_verify_button"] = hema.locator("#verify-differential").inner_text()
            facts["amend_diff_line"] = hema.locator("#gallery-diff").inner_text()
            hema.evaluate("() => window.scrollTo(0, document.getElementById('gallery').offsetTop - 10)")
            shot(hema, "08-amendment-withdrawn")
            with hema.expect_navigation():  # after the question (a dialog, accepted)
                hema.locator("#verify-differential").click()
            facts["amend_verify_notice"] = hema.locator(".notice").first.inner_text() if hema.locator(
                ".notice").count() else None
            hema.goto(case_url + "#amendments")
            hema.wait_for_load_state()
            facts["amendments"] = hema.locator("#amendments table.changes tbody tr").all_inner_texts()
            facts["amendment_items"] = hema.locator("#amendments li").all_inner_texts()
            shot(hema, "09-amendments", hema.locator("#amendments"))

            # the printed report: every page names the patient, page n of N
            hema.goto(case_url + "/report")
            hema.wait_for_load_state()
            shot(hema, "10-report-top")
            hema.emulate_media(media="print")
            pdf = hema.pdf(format="A4", prefer_css_page_size=True, display_header_footer=False)
            texts = [" ".join((pg.extract_text() or "").split()) for pg in pypdf.PdfReader(io.BytesIO(pdf)).pages]
            n = len(texts)
            facts["pdf"] = {"pages": n, "bytes": len(pdf), "every_page": [
                {"page": i, "patient": mrn in t, "accession": acc in t,
                 "reference": ref in t, "page_n_of_N": f"Page {i} of {n}" in t}
                for i, t in enumerate(texts, 1)],
                "hundred_percent": sorted(set(re.findall(r"\b100 ?%", " ".join(texts)))),
                "confirmed_ai_words": sum(t.count("confirmed the AI") for t in texts)}
            (tmp / "report.pdf").write_bytes(pdf)
            facts["pdf"]["first_page_text"] = texts[0][:1500]
            # the exports
            csv_text = api.get(f"/api/v1/fields.csv?case_id={cid}").text
            head, *rows = csv_text.strip().splitlines()
            facts["fields_csv"] = {"columns": head.split(","), "rows": len(rows)}
            fhir = api.get(f"/api/v1/cases/{cid}/fhir").json()
            facts["fhir"] = {"resourceType": fhir.get("resourceType"), "status": fhir.get("status"),
                             "contained": [(o.get("resourceType"), o.get("id"), o.get("status"))
                                           for o in fhir.get("contained", [])],
                             "conclusion": fhir.get("conclusion"),
                             "notes": [n.get("text") for o in fhir.get("contained", []) for n in o.get("note", [])],
                             "subject": fhir.get("subject"), "identifier": fhir.get("identifier")}
            facts["final_case"] = {k: v for k, v in api.get(f"/api/v1/cases/{cid}").json().items()
                                   if k in ("review", "differential_verified", "n_cells_counted", "ai")}
            browser.close()
    finally:
        facts["dialogs"] = dialogs
        facts["page_errors"] = errors
        (out / "facts.json").write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
        print(json.dumps(facts, indent=1, ensure_ascii=False)[:20000])
        print("pdf:", tmp / "report.pdf")


if __name__ == "__main__":
    main()
