"""The web application's pages (login, CSRF, review forms, report) and the user/token commands."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from leukodx.web.app import create_app
from leukodx.web.db import Case
from leukodx.web.settings import Settings, database_url_for
from webtools import FakeAnalyzer, field_bytes, login, make_test_app


@pytest.fixture()
def web(tmp_path):
    app, clin, admin = make_test_app(tmp_path)
    return TestClient(app), clin, admin, app


def new_case(client, headers, ref="S-2026-0001") -> int:
    r = client.post("/api/v1/cases", headers=headers, json={"reference": ref})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def jpg(label="Pre", seed=0):
    return ("files", (f"{label}-{seed}.jpg", field_bytes(label, seed), "image/jpeg"))


# --- pages ------------------------------------------------------------------------------------------------

def test_pages_need_login_and_forms_need_csrf(web):
    client, _, _, app = web
    r = client.get("/cases/1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert login(client, password="wrong-password").status_code == 401
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/cases"
    page = client.get("/cases")
    assert page.status_code == 200 and "AI suggests" in page.text
    assert 'src="http' not in page.text and 'href="http' not in page.text  # nothing from the internet
    # a form without its CSRF token is refused, and nothing is created
    r = client.post("/cases", data={"reference": "S-1"})
    assert r.status_code == 403
    with app.state.ctx.sessions() as db:
        assert db.scalar(select(func.count(Case.id))) == 0
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/cases", data={"reference": "S-1", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    cid = int(r.headers["location"].split("/")[2].split("?")[0])
    # the API through the login session: unsafe methods need the X-CSRF-Token header
    up = client.post(f"/api/v1/cases/{cid}/images", files=[jpg()])
    assert up.status_code == 403
    up = client.post(f"/api/v1/cases/{cid}/images", files=[jpg()], headers={"X-CSRF-Token": csrf})
    assert up.status_code == 201
    fid = up.json()["added"][0]["id"]
    page = client.get(f"/cases/{cid}")
    assert "Heat map" in page.text and "Sign off: confirm the AI suggestion" in page.text
    r = client.post(f"/cases/{cid}/fields/{fid}/review",
                    data={"label": "Benign", "note": "looks reactive", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post(f"/cases/{cid}/review", data={"label": "Pro", "note": "signed", "csrf_token": csrf},
                    follow_redirects=False)
    assert r.status_code == 422 and "differential is not verified" in r.text  # the warnings, read first
    r = client.post(f"/cases/{cid}/review", data={"label": "Pro", "note": "signed", "csrf_token": csrf,
                                                  "acknowledge": "yes"}, follow_redirects=False)
    assert r.status_code == 303
    report = client.get(f"/cases/{cid}/report")
    assert report.status_code == 200 and "Signed off" not in report.text and "alice" in report.text
    assert "print.css" in report.text
    # a clinician cannot open the admin page or delete
    assert client.get("/admin").status_code == 403
    assert client.post(f"/cases/{cid}/delete", data={"csrf_token": csrf}).status_code == 403


def test_a_flagged_field_shows_why_and_no_bare_confidence(web):
    """An out-of-distribution field: no confidence figure, the reason in words and what to do, on the case page
    and the report (no raw flag codes)."""
    import io

    from PIL import Image

    client, clin, _, _ = web
    cid = new_case(client, clin)
    blank = io.BytesIO()
    Image.new("RGB", (128, 128), (240, 240, 240)).save(blank, "PNG")
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[("files", ("blank.png", blank.getvalue(),
                                                                                    "image/png"))])
    assert r.status_code == 201 and r.json()["added"][0]["flag"] == "out_of_distribution"
    assert login(client).status_code == 303
    page = client.get(f"/cases/{cid}").text
    assert "Confidence: not given." in page and "AI not reliable on this image" in page
    assert "What to do:" in page and "Read the field yourself" in page and "nearly blank" in page
    report = client.get(f"/cases/{cid}/report").text
    assert "confidence not given" in report and "AI not reliable on this image" in report
    for text in (page, report):
        for code in ("out_of_distribution", "low_confidence", "overrideed", "flagged (1 out of"):
            assert code not in text, code


def test_flag_reasons_become_plain_words():
    from leukodx.inference.ood import FEATURE_ADVICE, FEATURE_REASON
    from leukodx.web.words import flag_words, reason_words

    w = flag_words("out_of_distribution", f"{FEATURE_REASON} {FEATURE_ADVICE} (feature distance 3.21 > 1.05)")
    assert "3.21" not in w["problem"] + w["action"] and "trained on" in w["problem"] and w["action"]
    w = flag_words("out_of_distribution", "white balance (red/green) 0.894 outside 0.924-1")  # an old database's
    assert "0.894" not in w["problem"] and "red/green" not in w["problem"] and "Read the field yourself" in w["action"]
    w = flag_words("out_of_distribution", "The field is out of focus: the cell outlines are blurred. Refocus the "
                   "microscope on the cells and capture the field again, or read the field yourself.")
    assert w["problem"] == "The field is out of focus: the cell outlines are blurred." and w["action"].startswith("Refocus")
    w = flag_words("low_confidence", "The model is not sure (confidence 0.41 below 0.50); it is often wrong")
    assert "41 %" in w["problem"] and "0.50" not in w["problem"]
    # a call its cells do not support: the page says why (it used to say only "the AI is unsure")
    w = flag_words("low_confidence", "The field is called Early (leukaemic), but none of its 1 leukocytes is "
                   "recognised as a blast: the call has no support in the cells. Look at the field yourself.")
    assert w["problem"].startswith("The field is called Early (leukaemic), but none of its 1 leukocytes")
    assert "Look at the field yourself" not in w["problem"] and w["action"]
    assert reason_words("2 of 5 fields flagged (1 low confidence, 1 out of distribution)").startswith(
        "2 of 5 fields are flagged")
    assert "leukemic" in reason_words("fields disagree: 2 malignant, 1 benign")


def test_login_form_needs_its_csrf_cookie(web):
    client, _, _, _ = web
    r = client.post("/login", data={"username": "alice", "password": "alice-password", "csrf_token": "forged"})
    assert r.status_code == 403 and "expired" in r.text


# --- command line -----------------------------------------------------------------------------------------

def test_cli_token_and_user(tmp_path):
    db = tmp_path / "cli.db"
    run = [sys.executable, "-m", "leukodx"]
    out = subprocess.run([*run, "token", "create", "--name", "lab-pc-1", "--db", str(db)],
                         capture_output=True, text=True, check=True)
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("ldx_") and len(token) > 30
    assert token not in db.read_bytes().decode("latin-1")  # only the hash is stored
    out = subprocess.run([*run, "user", "add", "bob", "--role", "admin", "--password-stdin", "--db", str(db)],
                         input="bob-password\n", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([*run, "user", "add", "bob", "--password-stdin", "--db", str(db)],
                         input="another-password\n", capture_output=True, text=True)
    assert bad.returncode == 2 and "already exists" in bad.stderr
    short = subprocess.run([*run, "user", "add", "carol", "--password-stdin", "--db", str(db)],
                           input="short\n", capture_output=True, text=True)
    assert short.returncode == 2 and "shorter" in short.stderr
    app = create_app(Settings(database_url=database_url_for(db)), analyzer=FakeAnalyzer())
    client = TestClient(app)
    assert client.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert login(client, "bob", "bob-password").status_code == 303
    assert client.get("/admin").status_code == 200


def test_images_are_kept_only_as_real_image_bytes(web):
    client, clin, _, app = web
    cid = new_case(client, clin)
    data = field_bytes("Benign", 9, fmt="PNG")
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[("files", ("x.png", data, "image/png"))])
    assert r.status_code == 201
    # the stored original is byte-identical, and served only to a logged-in user
    url = r.json()["added"][0]["image_url"]
    assert client.get(url).status_code == 401
    login(client)
    got = client.get(url)
    assert got.status_code == 200 and got.content == data and got.headers["content-type"] == "image/png"
    Image.open(io.BytesIO(client.get(r.json()["added"][0]["overlay_url"]).content)).verify()


def test_repeated_failed_logins_are_throttled(web):
    client, _, _, _ = web
    codes = [login(client, password=f"wrong-{i}").status_code for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    assert login(client).status_code == 429  # even the right password waits out the window



def test_missing_case_page_says_what_to_do(web):
    client, _, _, _ = web
    login(client)
    r = client.get("/cases/98765")
    assert r.status_code == 404 and "There is no case 98765" in r.text and 'href="/cases"' in r.text


def test_admin_manages_users_and_tokens_in_the_browser_pages(tmp_path):
    app, _, _ = make_test_app(tmp_path, users={"root": ("root-password", "admin")})
    client = TestClient(app)
    assert login(client, "root", "root-password").status_code == 303
    page = client.get("/admin")
    assert page.status_code == 200 and "Audit log" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/admin/tokens", data={"name": "lab-pc-9", "role": "clinician", "csrf_token": csrf})
    token = re.search(r'id="new-token">([^<]+)<', r.text).group(1)
    api = TestClient(app)
    assert api.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = client.post("/admin/users", data={"username": "dora", "password": "dora-password", "role": "clinician",
                                          "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert login(TestClient(app), "dora", "dora-password").status_code == 303
    weak = client.post("/admin/users", data={"username": "eve", "password": "short", "role": "clinician",
                                             "csrf_token": csrf})
    assert weak.status_code == 422 and "shorter than 8" in weak.text
    row = next(tr for tr in client.get("/admin").text.split("<tr>") if "<td>lab-pc-9</td>" in tr)
    token_id = re.search(r'action="/admin/tokens/(\d+)/revoke"', row).group(1)
    client.post(f"/admin/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert api.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_heat_map_is_computed_on_first_view_then_kept(web):
    client, clin, _, app = web
    cid = new_case(client, clin)
    fid = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg()]).json()["added"][0]["id"]
    url = f"/cases/{cid}/fields/{fid}/heatmap"
    assert client.get(url, follow_redirects=False).status_code == 303  # to the login page
    login(client)
    analyzer = app.state.ctx.service.analyzer
    calls = analyzer.calls
    first = client.get(url, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/files/")
    assert analyzer.calls == calls + 1
    png = client.get(first.headers["location"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    again = client.get(url, follow_redirects=False)
    assert again.headers["location"] == first.headers["location"] and analyzer.calls == calls + 1
    assert client.get(f"/api/v1/cases/{cid}", headers=clin).json()["fields"][0]["heatmap_url"] == \
        first.headers["location"]
    assert client.get(f"/cases/{cid}/fields/999/heatmap").status_code == 404


def test_one_percent_helper_never_rounds_up_to_certainty():
    from leukodx.web.words import percent

    assert [percent(p) for p in (0.9966, 0.995, 1.0, 0.994, 0.5, 0.004, 0.0, None)] == [
        "> 99 %", "> 99 %", "100 %", "99 %", "50 %", "< 1 %", "0 %", "–"]
    assert percent(0.9996, 1) == "> 99.9 %"


def test_times_are_shown_in_the_lab_zone_naming_it():
    from datetime import datetime

    from leukodx.web.words import local_time, zone

    tehran = zone("Asia/Tehran")
    assert local_time(datetime(2026, 5, 2, 10, 0), tehran) == "2026-05-02 13:30 (Asia/Tehran)"  # naive = UTC
    assert local_time("2026-05-02T10:00:00+00:00", tehran) == "2026-05-02 13:30 (Asia/Tehran)"
    assert local_time(None, tehran) == "–"


def test_gallery_crops_share_one_micrometre_scale(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from leukodx.web import gallery

    cells = [{"area_px": 400, "area_um2": 400 * 0.25 ** 2}, {"area_px": 100, "area_um2": None}]
    assert abs(gallery.um_per_px(cells) - 0.25) < 1e-9
    assert gallery.um_per_px([], {"um_per_px": 0.1}) == 0.1 and gallery.um_per_px([], {}) is None
    # 24 um is 96 px at 0.25 um/px and 48 px at 0.5 um/px: both drawn at 120 px, centred on the cell's box
    l0, t0, r0, b0 = gallery.crop_box((100, 100, 120, 140), 0.25)
    l1, t1, r1, b1 = gallery.crop_box((100, 100, 120, 140), 0.5)
    assert (r0 - l0, r1 - l1) == (96, 48) and (l0 + r0) / 2 == 120 and (t0 + b0) / 2 == 110
    assert gallery.crop_box((0, 0, 10, 10), None)[2] - gallery.crop_box((0, 0, 10, 10), None)[0] == gallery.CROP_PX
    path = tmp_path / "field.png"
    Image.fromarray(np.full((200, 300, 3), 180, np.uint8)).save(path)
    for scale in (0.25, 0.5, None):  # near the edge: grey beyond it, never an error
        png = gallery.crop_png(path, [0, 0, 12, 12], scale)
        im = Image.open(io.BytesIO(png))
        assert im.size == (gallery.CROP_PX, gallery.CROP_PX)
        bar = np.asarray(im.convert("RGB"))[gallery.CROP_PX - 9, 6:6 + 25]
        assert (bar == 255).all() == (scale is not None)  # the 5 um bar only where the scale is known


def test_a_model_probability_stored_as_1_never_reads_100_percent(web):
    """A cell's AI confidence is stored to 4 decimals, so 0.99996 is kept as 1.0: the pages still read "> 99 %"
    (the gallery showed "AI: Blast (100 %)")."""
    from leukodx.web.words import model_percent

    assert [model_percent(p) for p in (1.0, 0.9966, 0.5, 0.004, 0.0, None)] == [
        "> 99 %", "> 99 %", "50 %", "< 1 %", "< 1 %", "–"]
    client, _, _, app = web
    assert login(client).status_code == 303 and client.get("/cases").status_code == 200
    assert app.state.ctx.templates.env.filters["pct"](1.0) == "> 99 %"


def _review_fields(client, clin, cid, labels):
    fields = client.get(f"/api/v1/cases/{cid}", headers=clin).json()["fields"]
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={"fields": [
        {"field_id": f["id"], "decision": "override", "label": lab} for f, lab in zip(fields, labels, strict=True)]})
    assert r.status_code == 200, r.text


def test_field_calls_that_disagree_start_no_sign_off_and_say_so(web):
    """2 Benign and 2 Early field calls tie; the case rule's mean then puts Benign first. The sign-off must not
    start from "Benign (your field calls)" with a primary button: the page lists the calls, asks the reviewer to
    choose, warns before sign-off (a tick needed), and the report lists the calls instead of one class."""
    client, clin, _, _ = web
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                    files=[jpg("Benign", 1), jpg("Early", 2), jpg("Benign", 3), jpg("Early", 4)])
    assert r.status_code == 201, r.text
    _review_fields(client, clin, cid, ["Benign", "Early", "Benign", "Early"])
    assert login(client).status_code == 303
    page = client.get(f"/cases/{cid}").text
    assert "(your field calls)" not in page and "— choose the class —" in page
    assert "Your field calls: 2 Benign, 2 Early" in page and "do not point to one call" in page
    assert "uncertain: read the fields yourself" in page  # the case's confidence bar speaks of the case
    assert re.search(r'<p class="call" id="reviewed-call"><span class="muted">No single call', page)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(f"/cases/{cid}/review", data={"csrf_token": csrf, "label": "Early", "note": ""})
    assert "There are warnings to read before sign-off" in r.text
    assert client.get(f"/api/v1/cases/{cid}", headers=clin).json()["review"]["decision"] is None
    report = client.get(f"/cases/{cid}/report").text
    assert "no single call: 2 Benign, 2 Early (4 of 4 fields reviewed)" in report

    # the same fields all read as Early: the sign-off starts from it
    _review_fields(client, clin, cid, ["Early"] * 4)
    page = client.get(f"/cases/{cid}").text
    assert "(your field calls)" in page and "do not point to one call" not in page
    assert re.search(r'<option value="Early" selected>Early', page)


def test_a_signed_report_gives_no_to_do_for_the_differential(web):
    """A signed case's report states what the count is, without 'add fields' or 'verify it in the gallery'."""
    client, clin, _, _ = web
    cid = new_case(client, clin)
    assert client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1)]).status_code == 201
    assert login(client).status_code == 303
    before = client.get(f"/cases/{cid}/report").text
    assert ": add fields)" in before and "until a reviewer verifies it in the cell gallery" in before
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={"case": {"decision": "override", "label": "Pre"}})
    assert r.status_code == 200, r.text
    report = client.get(f"/cases/{cid}/report").text
    assert ": add fields)" not in report and "in the cell gallery" not in report
    assert "(fewer than the target of 100)" in report and "no reviewer verified this count" in report


class UnsureAnalyzer(FakeAnalyzer):
    """A class call on every field, but the field named unsure-*.jpg flagged: the AI may be wrong on it."""

    def analyze(self, image, *, name=None, heatmap=False):
        r = super().analyze(image, name=name, heatmap=heatmap)
        r.flag, r.flag_reason = ("low_confidence", "confidence 45 % is under 50 %") if "unsure" in (name or "") \
            else ("ok", "")
        return r


def sure_and_unsure_case(tmp_path):
    """A case of two fields, sure.jpg (unflagged) and unsure.jpg (flagged: the AI may be wrong): (client,
    clinician headers, case id, the upload's answer)."""
    app, clin, _ = make_test_app(tmp_path, analyzer=UnsureAnalyzer())
    client = TestClient(app)
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[
        ("files", ("sure.jpg", field_bytes("Pre", 1), "image/jpeg")),
        ("files", ("unsure.jpg", field_bytes("Pro", 2), "image/jpeg"))])
    assert r.status_code == 201, r.text
    return client, clin, cid, r


def test_a_flagged_field_preselects_no_call_and_offers_no_one_key_confirm(tmp_path):
    client, clin, cid, r = sure_and_unsure_case(tmp_path)
    sure, unsure = sorted(r.json()["added"], key=lambda f: f["name"])
    assert unsure["flag"] == "low_confidence" and unsure["label"] and sure["flag"] == "ok"
    assert login(client).status_code == 303

    page = client.get(f"/cases/{cid}?field={unsure['id']}").text
    select = re.search(r'<select id="field-label".*?</select>', page, re.S).group(0)
    assert re.search(r'<option value="" selected disabled>— choose your call', select)
    assert not re.search(r'<option value="[^"]+" selected', select)
    assert re.search(r'id="field-save"[^>]*>Save: choose your call first</button>', page)
    # saving without a choice says what to do, and nothing is stored
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(f"/cases/{cid}/fields/{unsure['id']}/review", data={"csrf_token": csrf, "label": ""})
    assert "No call was chosen for this field" in r.text
    assert client.get(f"/api/v1/cases/{cid}", headers=clin).json()["n_fields_reviewed"] == 0

    page = client.get(f"/cases/{cid}?field={sure['id']}").text
    assert re.search(rf'<option value="{sure["label"]}" selected>', page)
    assert re.search(r'id="field-save"[^>]*>Confirm the AI suggestion</button>', page)


def _steps(page: str) -> list[tuple[str, str]]:
    ol = re.search(r'<ol class="progress-steps".*?</ol>', page, re.S).group(0)
    return [(cls, " ".join(text.split())) for cls, text in re.findall(r'<li class="([^"]*)"[^>]*>([^<]*)</li>', ol)]


def test_progress_steps_show_only_done_and_current_steps_as_active(web):
    """Before sign-off "Signed off" is a step still to come, not an active one; one step is current at a time."""
    client, clin, _, _ = web
    cid = new_case(client, clin)
    assert login(client).status_code == 303
    assert _steps(client.get(f"/cases/{cid}").text) == [
        ("done", "Case created"), ("current", "Fields added (0)"), ("todo", "0 of 0 fields reviewed"),
        ("todo", "Signed off")]
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1), jpg("Early", 2)])
    assert r.status_code == 201, r.text
    page = client.get(f"/cases/{cid}").text
    assert _steps(page) == [("done", "Case created"), ("done", "Fields added (2)"),
                            ("current", "0 of 2 fields reviewed"), ("todo", "Signed off")]
    assert page.count('aria-current="step"') == 1
    _review_fields(client, clin, cid, ["Pre", "Pre"])
    assert _steps(client.get(f"/cases/{cid}").text)[2:] == [("done", "2 of 2 fields reviewed"),
                                                             ("current", "Signed off")]
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={"case": {"decision": "override", "label": "Pre"}})
    assert r.status_code == 200, r.text
    assert [c for c, _ in _steps(client.get(f"/cases/{cid}").text)] == ["done"] * 4


def test_an_amendments_summary_line_uses_the_words_of_its_table(tmp_path):
    """A cell moved after sign-off: the line above the table says "Blast (AI) → Lymphocyte / hematogone" as the
    table does, not the stored "blast (AI) → lymphocyte"."""
    app, clin, _ = make_test_app(tmp_path, analyzer=FakeAnalyzer(cell_labels=True))
    client = TestClient(app)
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1)])
    assert r.status_code == 201, r.text
    fields = client.get(f"/api/v1/cases/{cid}", headers=clin).json()["fields"]
    _review_fields(client, clin, cid, ["Pre"])
    blast = next(c for f in fields for c in f["cells"] if c["ai_label"] == "blast")
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={"case": {"decision": "override", "label": "Pre"}})
    assert r.status_code == 200, r.text
    r = client.patch(f"/api/v1/cases/{cid}/cells", headers=clin, json={
        "cells": [{"field_id": fields[0]["id"], "id": blast["id"], "label": "lymphocyte"}],
        "amendment_reason": "a hematogone"})
    assert r.status_code == 200, r.text
    assert login(client).status_code == 303
    for url in (f"/cases/{cid}", f"/cases/{cid}/report"):
        page = client.get(url).text
        item = re.search(r'<li id="amendment-1">(.*?)<table', page, re.S).group(1)
        line = " ".join(item.split())
        assert f"Field 1, cell {blast['id']}: Blast (AI) → Lymphocyte / hematogone" in line, line
        assert "blast" not in line and "lymphocyte" not in line, line
        row = re.search(rf'<th scope="row">Field 1, cell {blast["id"]}</th>(.*?)</tr>', page, re.S).group(1)
        assert '<td class="before">Blast (AI)</td>' in row and '<td class="after">Lymphocyte / hematogone</td>' in row


def test_outlined_and_differential_cell_numbers_agree_before_a_flagged_field_is_reviewed(tmp_path):
    """The summary and the differential's note give the same numbers in the same words: all the cells outlined,
    and how many of them the differential takes (a flagged field's cells wait for its review)."""
    client, clin, cid, _ = sure_and_unsure_case(tmp_path)
    case = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    n = {f["name"]: len(f["cells"]) for f in case["fields"]}
    assert n["sure.jpg"] and n["unsure.jpg"]
    total = n["sure.jpg"] + n["unsure.jpg"]
    assert login(client).status_code == 303

    def texts(url):
        page = client.get(url).text
        return [" ".join(re.sub(r"<[^>]+>", "", t).split()) for t in
                re.findall(r'<p id="cells-outlined">(.*?)</p>|<p class="muted small">(<strong>\d.*?) · <span id="cells-reviewed"', page, re.S)
                for t in t if t]

    def counted(n_in: int) -> str:
        # the differential line's number ("17 of 100 leukocytes counted"), and the rest of the listed cells
        k = client.get(f"/api/v1/cases/{cid}", headers=clin).json()["n_cells_counted"]
        assert 0 <= k <= n_in
        return (f"{k} counted, {n_in - k} listed but not counted (cut by the field's edge, unidentified, "
                "unclassified, excluded or not leukocytes)")

    want = (f"{total} cell(s) outlined: {counted(n['sure.jpg'])}, {n['unsure.jpg']} in a flagged "
            "field not yet reviewed (not counted until it is)")
    summary, note = texts(f"/cases/{cid}")
    assert summary == f"2 field(s) · {want}" and note == want
    assert want in " ".join(re.sub(r"<[^>]+>", "", client.get(f"/cases/{cid}/report").text).split())
    page = client.get(f"/cases/{cid}").text
    k = client.get(f"/api/v1/cases/{cid}", headers=clin).json()["n_cells_counted"]
    assert page.count(f'<strong class="outlined-counted">{k}</strong> counted') == 2  # the same number, twice
    assert f'<strong class="n-counted" id="n-counted">{k}</strong> of 100 leukocytes counted' in page
    unsure = next(f for f in case["fields"] if f["name"] == "unsure.jpg")
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                     json={"fields": [{"field_id": unsure["id"], "decision": "override", "label": "Pro"}]})
    assert r.status_code == 200, r.text
    summary, note = texts(f"/cases/{cid}")
    assert note == f"{total} cell(s) outlined: {counted(total)}" and summary.endswith(note)


def test_a_failed_sign_off_answer_names_the_case_url_to_put_in_the_address_bar(web):
    """The failure answer of a POST form carries the page's own URL (app.js puts it in the address bar, so a
    reload does not post the form again); the page as a GET carries none."""
    client, clin, _, _ = web
    cid = new_case(client, clin)
    assert client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1)]).status_code == 201
    assert login(client).status_code == 303
    page = client.get(f"/cases/{cid}").text
    assert "data-replace-url" not in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(f"/cases/{cid}/review", data={"csrf_token": csrf, "label": "", "note": "typed note"})
    assert r.status_code == 422 and "No final call was chosen" in r.text and ">typed note</textarea>" in r.text
    assert f'data-replace-url="/cases/{cid}"' in r.text
