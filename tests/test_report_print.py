"""Every printed page of a report names the patient: Chromium prints a long case to PDF and each page, read
back with pypdf, carries the patient ID, the accession number, the case reference and "Page n of N"."""

from __future__ import annotations

import io
import re

import httpx
import pytest

from webtools import LiveServer, browser_marks, field_bytes, launch_chromium, make_test_app

pytestmark = browser_marks()

# characters that HTML and a PDF's text must both carry through unchanged
PATIENT = 'MRN "0042" <b>&é'
ACCESSION = "ACC-2026/77"
REFERENCE = "S-2026-PRINT"
N_FIELDS = 12


def page_texts(pdf: bytes) -> list[str]:
    pypdf = pytest.importorskip("pypdf", reason="pypdf (the test extra) reads the printed PDF back")
    return [" ".join((page.extract_text() or "").split()) for page in pypdf.PdfReader(io.BytesIO(pdf)).pages]


def test_every_printed_page_names_the_patient_and_its_number(tmp_path):
    from playwright.sync_api import sync_playwright

    app, clin, _ = make_test_app(tmp_path, lab_name="Lab Cetak")
    with LiveServer(app) as url:
        r = httpx.post(url + "/api/v1/cases", headers=clin, timeout=30,
                       json={"reference": REFERENCE, "accession": ACCESSION, "patient_id": PATIENT})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        files = [("files", (f"field-{i:02d}.jpg", field_bytes(("Pre", "Pro", "Benign")[i % 3], 100 + i, size=160),
                            "image/jpeg")) for i in range(N_FIELDS)]
        r = httpx.post(f"{url}/api/v1/cases/{cid}/images", headers=clin, files=files, timeout=120)
        assert r.status_code == 201, r.text
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(url + "/login")
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill("alice-password")
            page.get_by_role("button", name="Log in").click()
            page.goto(f"{url}/cases/{cid}/report")
            page.wait_for_load_state("networkidle")
            assert page.evaluate("() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth > 0)")
            # the running head is for paper only
            assert not page.locator("#report-running-head").is_visible()
            pdf = page.pdf(format="A4", prefer_css_page_size=True)
            browser.close()
    texts = page_texts(pdf)
    n = len(texts)
    assert n >= 3, f"the case printed to {n} page(s); the test needs a report of several pages"
    for i, text in enumerate(texts, start=1):
        assert f"Page {i} of {n}" in text, (i, text[:300])
        assert len(re.findall(r"Page \d+ of \d+", text)) == 1, (i, text[:300])
        head = f"Patient ID {PATIENT} · Accession {ACCESSION} · Case {REFERENCE} (case {cid})"
        assert head in text, (i, text[:300])
    # the report really runs over the pages: the lab's head on the first, the signature lines on the last
    assert "Lab Cetak" in texts[0] and "Lab Cetak" not in texts[-1]
    assert "Signature" in texts[-1] and "Signature" not in texts[0]
