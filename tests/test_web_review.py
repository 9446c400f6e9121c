"""Reviewing like a hematology lab, over the API: locked sign-off (409 without an amendment reason), amendments,
cells with the AI's and the reviewer's class, the differential and blast %, duplicate images and references,
per-field CSV, no-store and the security headers."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from leukodx.inference.cell_classes import CELL_CLASSES
from leukodx.web.db import Field
from webtools import FakeAnalyzer, field_bytes, login


def CellAnalyzer():  # noqa: N802
    """The fake analyzer, with a cell-level suggestion on every other cell (the rest: no AI suggestion)."""
    return FakeAnalyzer(cell_labels=True)


@pytest.fixture()
def web(tmp_path, make_app):
    app, clin, admin = make_app(tmp_path, analyzer=CellAnalyzer(), users={
        "alice": ("alice-password", "clinician"), "bob": ("bob-password", "clinician")})
    return TestClient(app), clin, admin, app


def jpg(label="Pre", seed=0, name=None):
    return ("files", (name or f"{label}-{seed}.jpg", field_bytes(label, seed), "image/jpeg"))


def new_case(client, headers, ref="S-2026-0001", **extra) -> int:
    r = client.post("/api/v1/cases", headers=headers, json={"reference": ref, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def case_with_fields(client, headers, n=2, ref="S-1") -> tuple[int, dict]:
    cid = new_case(client, headers, ref)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=headers, files=[jpg("Pre", 10 + i) for i in range(n)])
    assert r.status_code == 201, r.text
    return cid, client.get(f"/api/v1/cases/{cid}", headers=headers).json()


def sign_off(client, headers, cid, **extra):
    return client.patch(f"/api/v1/cases/{cid}/review", headers=headers,
                        json={"case": {"decision": "override", "label": "Pre", "note": "blasts seen"}, **extra})


# --- cells -------------------------------------------------------------------------------------------------

def test_fields_carry_cells_and_the_case_its_differential(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin)
    cells = [c for f in case["fields"] for c in f["cells"]]
    assert cells and all(len(f["cells"]) == f["cell_count"] for f in case["fields"])
    for c in cells:
        assert {"id", "area_px", "centroid", "bbox", "label", "ai_label", "ai_confidence", "reviewed_by"} <= set(c)
        assert c["label"] is None and c["reviewed_by"] is None
        assert len(c["bbox"]) == 4 and len(c["centroid"]) == 2
        assert c["ai_label"] in (None, "blast", "lymphocyte")
    # the differential counts the cells of assessable fields only: called and unflagged (none is reviewed yet)
    counted = [c for f in case["fields"] if f["flag"] == "ok" and f["label"] for c in f["cells"]]
    assert len(counted) < len(cells) or all(f["flag"] == "ok" for f in case["fields"])
    blasts = sum(c["ai_label"] == "blast" for c in counted)
    classified = sum(c["ai_label"] is not None for c in counted)
    unlabelled = len(counted) - classified
    assert case["ai_differential"]["blast"] == blasts and case["ai_differential"]["unclassified"] == unlabelled
    assert case["differential"] == case["ai_differential"]  # nothing reviewed yet: the AI's suggestions count
    if classified:
        assert case["ai_blast_percent"] == pytest.approx(round(100 * blasts / classified, 1))
    assert case["n_cells"] == len(counted) and case["n_cells_reviewed"] == 0


def test_cells_without_an_ai_suggestion_are_unclassified_never_invented(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path)  # the plain fake analyzer: no cell-level suggestions at all
    client = TestClient(app)
    cid, case = case_with_fields(client, clin, n=1)
    n = case["n_cells"]
    assert n > 0 and all(c["ai_label"] is None for f in case["fields"] for c in f["cells"])
    assert case["ai_differential"]["unclassified"] == n and case["ai_blast_percent"] is None
    assert case["blast_percent"] is None


def test_reclassifying_cells_recomputes_the_differential_and_keeps_the_ais(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin, n=1)
    f = case["fields"][0]
    ids = [c["id"] for c in f["cells"]]
    ai_before = case["ai_differential"]
    changes = [{"id": ids[0], "label": "blast"}] + [{"id": i, "label": "neutrophil"} for i in ids[1:]]
    if len(ids) > 2:
        changes[-1] = {"id": ids[-1], "label": "excluded"}
    r = client.patch(f"/api/v1/cases/{cid}/fields/{f['id']}/cells", headers=clin, json={"cells": changes})
    assert r.status_code == 200, r.text
    out = r.json()
    want = {ch["id"]: ch["label"] for ch in changes}
    got = {c["id"]: c for c in out["fields"][0]["cells"]}
    assert all(got[i]["label"] == want[i] and got[i]["reviewed_by"] == "token:clinic-pc" for i in want)
    counted = sum(1 for v in want.values() if v != "excluded")
    assert out["differential"]["blast"] == 1 and out["differential"]["excluded"] == list(want.values()).count("excluded")
    assert out["blast_percent"] == pytest.approx(round(100 / counted, 1))
    assert out["ai_differential"] == ai_before  # the AI's own numbers are kept
    assert out["n_cells_reviewed"] == len(ids)
    # undo one: the AI's suggestion counts again
    r = client.patch(f"/api/v1/cases/{cid}/fields/{f['id']}/cells", headers=clin,
                     json={"cells": [{"id": ids[0], "label": None}]})
    assert r.status_code == 200 and r.json()["fields"][0]["cells"][0]["label"] is None


def test_bad_cell_changes_say_what_to_do(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin, n=1)
    fid = case["fields"][0]["id"]
    url = f"/api/v1/cases/{cid}/fields/{fid}/cells"
    r = client.patch(url, headers=clin, json={"cells": [{"id": 99999, "label": "blast"}]})
    assert r.status_code == 404 and "no cell 99999" in r.json()["detail"]
    r = client.patch(url, headers=clin, json={"cells": [{"id": 1, "label": "Pre"}]})
    assert r.status_code == 422
    r = client.patch(f"/api/v1/cases/{cid}/fields/424242/cells", headers=clin,
                     json={"cells": [{"id": 1, "label": "blast"}]})
    assert r.status_code == 404
    assert set(CELL_CLASSES) < set(client.get("/openapi.json").json()["components"]["schemas"]["CellChange"]
                                   ["properties"]["label"]["anyOf"][0]["enum"])


# --- sign-off integrity ------------------------------------------------------------------------------------

def test_a_signed_off_case_refuses_every_silent_change_with_409(web):
    client, clin, admin, app = web
    cid, case = case_with_fields(client, clin)
    fid = case["fields"][0]["id"]
    cell = case["fields"][0]["cells"][0]["id"]
    assert sign_off(client, clin, cid).status_code == 200
    before = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert before["locked"] and not before["amended"] and before["amendments"] == []

    attempts = [
        client.patch(f"/api/v1/cases/{cid}/review", headers=admin,
                     json={"case": {"decision": "override", "label": "Benign"}}),
        client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                     json={"fields": [{"field_id": fid, "decision": "override", "label": "Pro"}]}),
        client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                     json={"case": {"decision": "override", "label": "Pro"}, "amendment_reason": "   "}),
        client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pro", 99)]),
        client.patch(f"/api/v1/cases/{cid}/fields/{fid}/cells", headers=clin,
                     json={"cells": [{"id": cell, "label": "monocyte"}]}),
        client.post(f"/api/v1/cases/{cid}/confirm-unflagged", headers=clin),
    ]
    for r in attempts:
        assert r.status_code == 409, (r.status_code, r.text)
        detail = r.json()["detail"]
        assert "signed off" in detail and "amendment_reason" in detail
        assert not re.search(r"\d{4}-\d\d-\d\dT", detail) and len(detail) < 200  # short, no raw ISO timestamp
    after = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert after == before  # nothing changed, nothing was stored
    with app.state.ctx.sessions() as db:
        assert db.scalar(select(func.count(Field.id))) == 2


def test_signing_off_twice_the_same_way_is_not_an_amendment(web):
    client, clin, _, _ = web
    cid, _ = case_with_fields(client, clin, n=1)
    assert sign_off(client, clin, cid).status_code == 200
    again = sign_off(client, clin, cid)  # a double submit
    assert again.status_code == 200 and again.json()["amendments"] == []


def test_an_amendment_that_changes_nothing_is_refused_and_not_recorded(web):
    client, clin, _, _ = web
    cid, _ = case_with_fields(client, clin, n=1)
    signed = sign_off(client, clin, cid).json()
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={
        "case": {"decision": signed["review"]["decision"], "label": signed["review"]["label"],
                 "note": signed["review"]["note"] or ""},
        "amendment_reason": "pressed the amend button by mistake"})
    assert r.status_code == 422, r.text
    assert "Nothing to amend" in r.json()["detail"] and "change the note" in r.json()["detail"]
    assert client.get(f"/api/v1/cases/{cid}", headers=clin).json()["amendments"] == []


def test_amendments_are_kept_with_who_when_why_before_and_after(web):
    client, clin, admin, _ = web
    cid, case = case_with_fields(client, clin)
    fid = case["fields"][0]["id"]
    cell = case["fields"][0]["cells"][0]["id"]
    sign_off(client, clin, cid)
    # another user (the admin token) amends the case call; then the clinician a cell, and adds a field
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=admin, json={
        "case": {"decision": "override", "label": "Pro", "note": "second opinion"},
        "amendment_reason": "Flow cytometry: CD10 negative, pro-B"})
    assert r.status_code == 200, r.text
    r = client.patch(f"/api/v1/cases/{cid}/fields/{fid}/cells", headers=clin,
                     json={"cells": [{"id": cell, "label": "smudge"}], "amendment_reason": "smudge cell, not a blast"})
    assert r.status_code == 200, r.text
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pro", 77)],
                    data={"amendment_reason": "a further field of the same smear"})
    assert r.status_code == 201, r.text
    out = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert out["amended"] and len(out["amendments"]) == 3 and len(out["fields"]) == 3
    a1, a2, a3 = out["amendments"]
    assert a1["by"] == "token:admin-pc" and a1["reason"] == "Flow cytometry: CD10 negative, pro-B" and a1["at"]
    assert a1["before"]["case"]["label"] == "Pre" and a1["before"]["case"]["reviewed_by"] == "token:clinic-pc"
    assert a1["after"]["case"]["label"] == "Pro" and out["review"]["label"] == "Pro"
    assert a2["before"]["cells"][0]["label"] is None and a2["after"]["cells"][0]["label"] == "smudge"
    assert a3["before"]["n_fields"] == 2 and a3["after"]["n_fields"] == 3
    assert [a["n"] for a in out["amendments"]] == [1, 2, 3]


def test_the_same_image_never_becomes_two_fields(web):
    client, clin, _, app = web
    cid = new_case(client, clin)
    data = field_bytes("Pre", 5)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[
        ("files", ("a.jpg", data, "image/jpeg")), ("files", ("a-copy.jpg", data, "image/jpeg"))])
    assert r.status_code == 201 and len(r.json()["added"]) == 1
    (sk,) = r.json()["skipped"]
    assert sk["file"] == "a-copy.jpg" and "sent twice" in sk["reason"] and sk["field_id"] == r.json()["added"][0]["id"]
    again = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[("files", ("renamed.jpg", data,
                                                                                        "image/jpeg"))])
    assert again.status_code == 200 and again.json()["added"] == []
    (sk,) = again.json()["skipped"]
    assert sk["field_id"] == r.json()["added"][0]["id"] and sk["reason"] == (
        "The same image (identical content) is already field 1 of this case (a.jpg); it was not added again, so its "
        "cells are not counted twice.")
    case = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert len(case["fields"]) == 1 and case["ai"]["n_fields"] == 1
    # another case may hold the same image
    other = new_case(client, clin, "S-OTHER")
    assert client.post(f"/api/v1/cases/{other}/images", headers=clin,
                       files=[("files", ("a.jpg", data, "image/jpeg"))]).status_code == 201


def test_a_duplicate_reference_is_warned_about(web):
    client, clin, _, _ = web
    first = new_case(client, clin, "S-2026-0099")
    r = client.post("/api/v1/cases", headers=clin, json={"reference": "s-2026-0099 "})
    assert r.status_code == 201
    assert any(f"case {first}" in w and "same smear reference" in w for w in r.json()["warnings"])
    r = client.post("/api/v1/cases", headers=clin, json={"reference": "S-2026-0100"})
    assert not any("same smear reference" in w for w in r.json()["warnings"])


def test_sign_off_warnings_name_unreviewed_and_flagged_fields(web):
    from PIL import Image

    client, clin, _, _ = web
    cid = new_case(client, clin)
    blank = io.BytesIO()
    Image.new("RGB", (128, 128), (240, 240, 240)).save(blank, "PNG")
    client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                files=[jpg("Pre", 1), ("files", ("blank.png", blank.getvalue(), "image/png"))])
    w = client.get(f"/api/v1/cases/{cid}", headers=clin).json()["warnings"]
    assert any("2 of 2 field(s) not reviewed" in x for x in w)
    assert any(x.startswith("Field 2 is flagged") and "out_of_distribution" not in x for x in w)
    # the flag's own words are on the field and under "Needs attention", not repeated in the warnings
    assert all("its flag says why" in x for x in w if x.startswith("Field 2 is flagged"))
    # confirm all unflagged fields: the flagged one stays for the clinician (a malignant call is named to be confirmed)
    out = client.post(f"/api/v1/cases/{cid}/confirm-unflagged", headers=clin, json={"confirm_malignant": [1]}).json()
    assert [f["review"]["decision"] for f in out["fields"]] == ["confirm", None]
    assert out["n_fields_reviewed"] == 1
    assert any("1 of 2 field(s) not reviewed" in x for x in out["warnings"])


# --- exports and headers -----------------------------------------------------------------------------------

def test_per_field_csv_beside_the_case_csv(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin)
    client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={
        "fields": [{"field_id": case["fields"][0]["id"], "decision": "override", "label": "Benign"}]})
    r = client.get("/api/v1/fields.csv", headers=clin, params={"case_id": cid})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["field_id"] for row in rows] == [str(f["id"]) for f in case["fields"]]
    assert rows[0]["review_label"] == "Benign" and rows[0]["reviewed_by"] == "token:clinic-pc"
    assert rows[1]["review_label"] == "" and int(rows[0]["n_cells"]) == case["fields"][0]["cell_count"]
    everything = list(csv.DictReader(io.StringIO(client.get("/api/v1/fields.csv", headers=clin).text)))
    assert len(everything) == 2
    # the case CSV keeps its columns
    head = client.get("/api/v1/cases", headers=clin, params={"format": "csv"}).text.splitlines()[0]
    assert head.startswith("case_id,reference,created_at,created_by,n_fields,ai_label")


def test_authenticated_answers_are_no_store_and_every_page_has_the_security_headers(web):
    client, clin, _, _ = web
    cid, _ = case_with_fields(client, clin, n=1)
    for r in (client.get(f"/api/v1/cases/{cid}", headers=clin), client.get("/api/v1/cases", headers=clin),
              client.get(f"/api/v1/cases/{cid}/fhir", headers=clin)):
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    login(client)
    pages = [client.get(p) for p in ("/cases", f"/cases/{cid}", f"/cases/{cid}/report", "/account", "/api",
                                     "/cases/98765")]
    pages.append(TestClient(client.app).get("/login"))
    for r in pages:
        assert r.headers["cache-control"] == "no-store", r.url
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), f"inline script on {r.url}"
        assert not re.search(r"\son[a-z]+=\"", r.text), f"inline event handler on {r.url}"
        assert "style=\"" not in r.text
    static = client.get("/static/app.js")
    assert static.headers["x-content-type-options"] == "nosniff" and "no-store" not in static.headers.get(
        "cache-control", "")


def test_old_fields_get_their_cells_from_the_stored_result(web):
    """Revision 0002 backfills fields.cells from the analysis result a field already stored."""
    import importlib

    client, clin, _, app = web
    _, case = case_with_fields(client, clin, n=1)
    mod = importlib.import_module("leukodx.web.migrations.versions.0002_cells_amendments")
    with app.state.ctx.sessions() as db:
        f = db.get(Field, case["fields"][0]["id"])
        stored = mod._cells_of(f.result)
    assert [c["id"] for c in stored] == [c["id"] for c in case["fields"][0]["cells"]]
    assert [c["ai_label"] for c in stored] == [c["ai_label"] for c in case["fields"][0]["cells"]]
    assert all(c["label"] is None and c["reviewed_by"] is None for c in stored)


# --- the pages ---------------------------------------------------------------------------------------------

def csrf_of(client) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/cases").text).group(1)


def test_a_double_submit_of_the_new_case_form_makes_one_case(web):
    client, _, _, app = web
    login(client)
    page = client.get("/cases").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    token = re.search(r'name="form_token" value="([^"]+)"', page).group(1)
    form = {"reference": "S-DOUBLE", "specimen": "Peripheral blood", "stain": "Giemsa", "csrf_token": csrf,
            "form_token": token}
    first = client.post("/cases", data=form, follow_redirects=False)
    second = client.post("/cases", data=form, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    assert second.headers["location"] == first.headers["location"].split("?")[0]
    with app.state.ctx.sessions() as db:
        assert db.scalar(select(func.count()).select_from(select(Field.id).subquery())) == 0
        from leukodx.web.db import Case

        rows = db.scalars(select(Case)).all()
    assert [(c.reference, c.stain) for c in rows] == [("S-DOUBLE", "Giemsa")]


def test_the_new_case_form_warns_about_a_duplicate_reference_and_keeps_the_input(web):
    client, clin, _, app = web
    first = new_case(client, clin, "S-2026-0007")
    login(client)
    csrf = csrf_of(client)
    r = client.post("/cases", data={"reference": "S-2026-0007", "note": "second smear?", "csrf_token": csrf})
    assert r.status_code == 409 and "same smear reference" in r.text and f'href="/cases/{first}"' in r.text
    assert "second smear?" in r.text and 'name="confirm_duplicate"' in r.text
    r = client.post("/cases", data={"reference": "S-2026-0007", "csrf_token": csrf, "confirm_duplicate": "yes"},
                    follow_redirects=False)
    assert r.status_code == 303


def test_signed_off_case_page_refuses_a_silent_change_and_loses_nothing(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin, n=1)
    fid = case["fields"][0]["id"]
    login(client)
    csrf = csrf_of(client)
    r = client.post(f"/cases/{cid}/review", data={"label": "Pre", "note": "", "csrf_token": csrf})
    assert r.status_code == 422 and "I have seen these warnings" in r.text  # a field is still unreviewed
    r = client.post(f"/cases/{cid}/review", data={"label": "Pre", "csrf_token": csrf, "acknowledge": "yes"},
                    follow_redirects=False)
    assert r.status_code == 303
    page = client.get(f"/cases/{cid}").text
    assert "this case is locked" in page and "Reason for the amendment" in page and "Any clinician may amend" in page
    r = client.post(f"/cases/{cid}/fields/{fid}/review",
                    data={"label": "Benign", "note": "reactive lymphocytes", "csrf_token": csrf})
    assert r.status_code == 409 and "is locked" in r.text and "reactive lymphocytes" in r.text
    r = client.post(f"/cases/{cid}/fields/{fid}/review", follow_redirects=False, data={
        "label": "Benign", "note": "reactive lymphocytes", "amendment_reason": "second look", "csrf_token": csrf})
    assert r.status_code == 303
    page = client.get(f"/cases/{cid}").text
    assert "Amendment 1" in page and "second look" in page
    report = client.get(f"/cases/{cid}/report").text
    assert "Amendment 1" in report and "second look" in report and "Haematology laboratory" in report


def test_the_cell_gallery_shows_every_crop_and_takes_a_class(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin, n=2)
    login(client)
    page = client.get(f"/cases/{cid}").text
    cells = [(f["id"], c) for f in case["fields"] for c in f["cells"]]
    for fid, c in cells:
        assert f'id="cell-{fid}-{c["id"]}"' in page and f'href="?field={fid}&amp;cell={c["id"]}#viewer"' in page
        crop = client.get(f"/cases/{cid}/fields/{fid}/cells/{c['id']}.png")
        assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    assert ("No AI suggestion" in page) == any(c["ai_label"] is None for _, c in cells)
    assert "Keyboard shortcuts" in page and "of 2 fields reviewed" in page
    fid, c = cells[0]
    r = client.post(f"/cases/{cid}/fields/{fid}/cells", data={"cell_id": c["id"], "label": "monocyte",
                                                               "csrf_token": csrf_of(client)}, follow_redirects=False)
    assert r.status_code == 303
    got = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert got["differential"]["monocyte"] == 1 and got["fields"][0]["cells"][0]["reviewed_by"] == "alice"
    assert client.get(f"/cases/{cid}/fields/{fid}/cells/9999.png").status_code == 404
    assert TestClient(client.app).get(f"/cases/{cid}/fields/{fid}/cells/{c['id']}.png",
                                      follow_redirects=False).status_code == 303  # to the login page


def test_the_case_summary_takes_the_clinicians_field_calls_into_account(web):
    client, clin, _, _ = web
    cid, case = case_with_fields(client, clin, n=3)
    assert case["reviewed_fields_label"] is None
    other = "Benign" if case["ai"]["label"] != "Benign" else "Pro"
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={"fields": [
        {"field_id": f["id"], "decision": "override", "label": other} for f in case["fields"]]})
    assert r.json()["reviewed_fields_label"] == other and r.json()["ai"]["label"] == case["ai"]["label"]
    login(client)
    page = client.get(f"/cases/{cid}").text
    mark = page.index('id="reviewed-call"')
    assert f"cls-{other.lower()}" in page[mark:mark + 200]
    select = page[page.index('id="case-label"'):page.index("</select>", page.index('id="case-label"'))]
    assert f'value="{other}" selected' in select  # the sign-off starts from the reviewer's field calls
