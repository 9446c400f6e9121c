"""What the record says is what happened (issue 31), over the API of a real server and on the pages: whose call
a reviewer's call is (`review.basis`, the report, FHIR), a bulk confirmation that names each malignant call and
asks once, a withdrawn verification said where the change was made (and given again in the same amendment), and
the small things a technologist hits."""

from __future__ import annotations

import io
import re
from html import unescape
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from leukodx.inference.summary import malignant_probability
from webtools import FakeAnalyzer, LiveServer, login

# marker pixels (top left) -> (AI label, confidence); a flag when the confidence is under 0.5
CALLS = {(1, 1, 1): ("Benign", 0.95), (2, 2, 2): ("Pre", 0.95), (3, 3, 3): ("Early", 0.3), (4, 4, 4): ("Pro", 0.95),
         (5, 5, 5): (None, 0.0)}  # None: no smear field, no class call


class MarkedAnalyzer(FakeAnalyzer):
    """The fake analyzer, its call set by the image's marker pixel (CALLS), and every cell given an AI class (a
    blast, or a lymphocyte) so that the differential can be verified."""

    def analyze(self, image, *, name=None, heatmap=False):
        from leukodx.data.images import read_rgb

        rgb = image if isinstance(image, np.ndarray) else read_rgb(image if not isinstance(image, Path) else str(image))
        r = super().analyze(rgb, name=name, heatmap=heatmap)
        call = CALLS.get(tuple(int(v) for v in rgb[0, 0]))
        if call and call[0] is None:
            r.label, r.probabilities, r.confidence, r.malignant_probability, r.cells, r.cell_count = None, {}, 0, 0, [], 0
            r.flag, r.flag_reason = "out_of_distribution", "The image does not look like a blood smear field"
        elif call:
            label, p = call
            rest = (1 - p) / (len(self.classes) - 1)
            r.probabilities = {c: (p if c == label else rest) for c in self.classes}
            r.label, r.confidence = label, p
            r.malignant_probability = malignant_probability(r.probabilities)
            r.flag, r.flag_reason = ("ok", "") if p >= 0.5 else ("low_confidence", f"confidence {p:.3f} is under 0.5")
        for k, c in enumerate(r.cells):
            c.ai_label, c.ai_confidence = ("blast" if k % 3 == 0 else "lymphocyte"), 0.8
        return r


def field_png(label: str | None, seed: int = 0, size: int = 128) -> bytes:
    from PIL import Image

    from leukodx.data.synthetic import synthetic_field

    rgb = synthetic_field("Pre", size, seed)[0].copy()
    rgb[0, 0] = next(k for k, v in CALLS.items() if v[0] == label)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def words(html: str) -> str:
    """A page's text, as a reader sees it."""
    return re.sub(r"\( | \)", lambda m: m.group(0).strip(), " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split()))


@pytest.fixture()
def live(tmp_path, make_app):
    app, clin, admin = make_app(tmp_path, analyzer=MarkedAnalyzer())
    with LiveServer(app) as url, httpx.Client(base_url=url, headers=clin, timeout=60) as api:
        yield api, app


def new_case(api, labels: list[str | None], ref: str = "S-31") -> tuple[int, dict]:
    cid = api.post("/api/v1/cases", json={"reference": ref}).json()["id"]
    files = [("files", (f"{i}-{label or 'photo'}.png", field_png(label, i), "image/png"))
             for i, label in enumerate(labels, 1)]
    r = api.post(f"/api/v1/cases/{cid}/images", files=files)
    assert r.status_code == 201, r.text
    return cid, api.get(f"/api/v1/cases/{cid}").json()


# --- 1. a reviewer's own call is recorded as theirs -------------------------------------------------------------

def test_the_reviewers_own_call_is_not_recorded_as_a_confirmation(live):
    api, app = live
    cid, case = new_case(api, ["Early", "Early", "Pre", "Benign"])
    ai = case["ai"]["label"]
    assert ai and not case["ai"]["confident"]
    early, _, pre, benign = (f["id"] for f in case["fields"])
    r = api.patch(f"/api/v1/cases/{cid}/review", json={"fields": [
        {"field_id": early, "decision": "confirm"},  # flagged: the AI was unsure
        {"field_id": pre, "decision": "confirm"},  # unflagged: a confident call, confirmed
        {"field_id": benign, "decision": "override", "label": "Pro"}]})
    assert r.status_code == 200, r.text
    bases = [f["review"]["basis"] for f in r.json()["fields"]]
    assert bases == ["reviewer_call_same_as_unconfident_ai", None, "confirmed_ai", "override"]
    # the case call under its confidence threshold: the reviewer chose the class the AI suggested
    r = api.patch(f"/api/v1/cases/{cid}/review", json={"case": {"decision": "confirm", "note": "blasts"}})
    out = r.json()
    assert out["review"]["decision"] == "confirm" and out["review"]["basis"] == "reviewer_call_same_as_unconfident_ai"

    client = TestClient(app)
    login(client)
    report = words(client.get(f"/cases/{cid}/report").text)
    assert "reviewer's call; the AI's unconfident suggestion was the same" in report
    assert "confirmed the AI suggestion" not in report.split("Fields")[0]  # the case call is the reviewer's
    page = words(client.get(f"/cases/{cid}").text)
    assert "(reviewer's call; the AI's unconfident suggestion was the same)" in page
    assert "(confirmed the AI suggestion)" not in page
    fhir = api.get(f"/api/v1/cases/{cid}/fhir").json()
    notes = [n["text"] for o in fhir["contained"] if o["id"] == "call" for n in o["note"]]
    assert f"Reviewer's call: {ai} (reviewer's call; the AI's unconfident suggestion was the same)." in notes
    assert any("field 1: Early (reviewer's call; the AI's unconfident suggestion was the same)" in n
               and "field 3: Pre (confirmed the AI suggestion)" in n and "field 4: Pro (overrode" in n for n in notes)
    rows = api.get("/api/v1/fields.csv", params={"case_id": cid}).text.splitlines()
    assert rows[0].endswith(",review_basis") and rows[1].endswith(",reviewer_call_same_as_unconfident_ai")
    assert api.get("/api/v1/cases", params={"format": "csv"}).text.splitlines()[1].endswith(
        ",reviewer_call_same_as_unconfident_ai")


def test_a_confident_case_call_confirmed_is_a_confirmation(live):
    api, _ = live
    cid, case = new_case(api, ["Pre", "Pre"])
    assert case["ai"]["confident"]
    out = api.patch(f"/api/v1/cases/{cid}/review", json={"case": {"decision": "confirm"}}).json()
    assert out["review"]["basis"] == "confirmed_ai"
    out = api.patch(f"/api/v1/cases/{cid}/review", json={"case": {"decision": "override", "label": "Pro"},
                                                          "amendment_reason": "flow cytometry"}).json()
    assert out["review"]["basis"] == "override"


# --- 2. bulk confirmation names each malignant call -------------------------------------------------------------

def test_a_malignant_call_is_never_confirmed_in_bulk_unless_named(live):
    api, _ = live
    cid, case = new_case(api, ["Benign", "Pre", "Early", "Pro"])
    before = api.get(f"/api/v1/cases/{cid}").json()
    for body in (None, {}, {"confirm_malignant": [2]}, {"confirm_malignant": [1, 3]}):
        r = api.post(f"/api/v1/cases/{cid}/confirm-unflagged", **({} if body is None else {"json": body}))
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "malignant" in detail and "confirm_malignant" in detail and "field 1" not in detail.lower()
        assert "4 (Pro)" in detail and ("2 (Pre)" in detail) == (body is None or 2 not in body.get("confirm_malignant", []))
    assert api.get(f"/api/v1/cases/{cid}").json() == before  # nothing was confirmed
    r = api.post(f"/api/v1/cases/{cid}/confirm-unflagged", json={"confirm_malignant": [2, 4]})
    assert r.status_code == 200, r.text
    assert [f["review"]["decision"] for f in r.json()["fields"]] == ["confirm", "confirm", None, "confirm"]


def test_the_page_lists_what_bulk_confirmation_confirms_and_asks_once(live):
    api, app = live
    cid, case = new_case(api, ["Benign", "Pre", "Early"])
    client = TestClient(app)
    login(client)
    page = client.get(f"/cases/{cid}").text
    step = page[page.index('id="confirm-unflagged-step"'):page.index("</details>", page.index('id="confirm-unflagged-step"'))]
    text = words(step)
    assert "Confirm all unflagged fields (2)…" in text and "1 is a malignant call" in text
    assert re.search(r"Field 2 \(2-Pre.png\): Pre .*— malignant call", text) and "Field 3" not in text
    assert 'name="confirm_malignant" value="2"' in step
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    # a form without the malignant field named confirms nothing, and shows the list again
    r = client.post(f"/cases/{cid}/confirm-unflagged", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 422 and "check it again below" in r.text and '<details class="bulk-step" id="confirm-unflagged-step" open>' in r.text
    r = client.post(f"/cases/{cid}/confirm-unflagged", data={"csrf_token": csrf, "confirm_malignant": "2"},
                    follow_redirects=False)
    assert r.status_code == 303
    assert [f["review"]["basis"] for f in api.get(f"/api/v1/cases/{cid}").json()["fields"]] == [
        "confirmed_ai", "confirmed_ai", None]


# --- 3. a withdrawn verification is said aloud ------------------------------------------------------------------

def counted_cells(case: dict) -> list[tuple[int, int]]:
    return [(f["id"], c["id"]) for f in case["fields"] for c in f["cells"] if c["final_label"] in ("blast", "lymphocyte")]


def test_a_change_that_withdraws_the_verification_says_so_and_verifying_again_joins_its_amendment(live):
    api, _ = live
    cid, case = new_case(api, ["Pre", "Pre"])
    (f1, c1), (f2, c2) = counted_cells(case)[:2]
    assert api.post(f"/api/v1/cases/{cid}/differential/verify").json()["differential_verified"]
    r = api.patch(f"/api/v1/cases/{cid}/cells", json={"cells": [{"field_id": f1, "id": c1, "label": "monocyte"}]})
    assert r.json()["verification_withdrawn"] is True and not r.json()["differential_verified"]
    r = api.patch(f"/api/v1/cases/{cid}/cells", json={"cells": [{"field_id": f2, "id": c2, "label": "monocyte"}]})
    assert r.json()["verification_withdrawn"] is False  # nothing verified to take back
    assert api.post(f"/api/v1/cases/{cid}/differential/verify").json()["verification_withdrawn"] is False
    # signed off: the move is an amendment that withdraws the verification; verifying again joins that amendment
    api.patch(f"/api/v1/cases/{cid}/review", json={"case": {"decision": "confirm"}})
    why = "cell 1 is a monocyte after all"
    r = api.patch(f"/api/v1/cases/{cid}/cells", json={"cells": [{"field_id": f1, "id": c1, "label": "blast"}],
                                                      "amendment_reason": why})
    assert r.json()["verification_withdrawn"] is True and len(r.json()["amendments"]) == 1
    r = api.post(f"/api/v1/cases/{cid}/differential/verify", json={"amendment_reason": why})
    out = r.json()
    assert out["differential_verified"] and len(out["amendments"]) == 1
    (a,) = out["amendments"]
    assert [ch["target"] for ch in a["changes"]] == ["cell", "differential", "differential"]
    assert a["changes"][-1]["after"] == "verified by token:clinic-pc" and a["reason"] == why
    # another reason is another amendment
    r = api.patch(f"/api/v1/cases/{cid}/cells", json={"cells": [{"field_id": f1, "id": c1, "label": None}],
                                                      "amendment_reason": "undo"})
    out = api.post(f"/api/v1/cases/{cid}/differential/verify", json={"amendment_reason": "checked"}).json()
    assert len(out["amendments"]) == 3


def test_a_field_call_that_withdraws_the_verification_says_so_on_the_page(live):
    api, app = live
    cid, case = new_case(api, ["Pre", "Early"])
    assert api.post(f"/api/v1/cases/{cid}/differential/verify").json()["differential_verified"]
    client = TestClient(app)
    login(client)
    first, flagged = case["fields"]
    page = client.get(f"/cases/{cid}?field={first['id']}").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post(f"/cases/{cid}/fields/{first['id']}/review", data={"csrf_token": csrf, "label": "Pre"},
                    follow_redirects=False)  # counted already: the verification stays
    assert "withdrawn" not in r.headers["location"] and "done=field-reviewed" in r.headers["location"]
    r = client.post(f"/cases/{cid}/fields/{flagged['id']}/review", data={"csrf_token": csrf, "label": "Early"},
                    follow_redirects=False)  # the flagged field now counts: its cells join the differential
    assert r.status_code == 303 and "withdrawn=1" in r.headers["location"]
    # the last field: the page says every field is reviewed (no "next field to review")
    assert "done=fields-all-reviewed" in r.headers["location"]
    page = client.get(r.headers["location"]).text
    text = words(page)
    assert "Showing the next field to review" not in text and "Every field is reviewed now" in text
    assert "This change took back the differential's verification" in text
    assert 'id="verification-withdrawn"' in page and "Verify the differential again" in text


# --- 4. small things --------------------------------------------------------------------------------------------

def test_a_locked_case_shows_its_summary_before_the_upload_box_and_the_ais_reason_is_no_reviewers_note(live):
    api, app = live
    cid, case = new_case(api, ["Pre", None])
    assert [(u["number"], u["reason_by"]) for u in case["unassessable_fields"]] == [(2, "ai")]
    client = TestClient(app)
    login(client)

    def listed() -> str:
        page = client.get(f"/cases/{cid}").text
        part = page[page.index('id="unassessable-list"'):]
        return words(part[:part.index("</p>")])

    assert "field 2 (the AI's suggestion, not reviewed yet: No class call from the AI (AI not reliable on this " \
        "image))" in listed() and "“" not in listed()
    api.patch(f"/api/v1/cases/{cid}/review", json={"fields": [
        {"field_id": case["fields"][1]["id"], "decision": "unassessable", "note": "a photo, not a smear"}]})
    assert "field 2 (reviewer's note: “a photo, not a smear”)" in listed()
    page = client.get(f"/cases/{cid}").text
    assert page.index('id="upload-box"') < page.index('id="summary"')
    api.patch(f"/api/v1/cases/{cid}/review", json={"case": {"decision": "confirm"}})
    page = client.get(f"/cases/{cid}").text
    assert page.index('id="summary"') < page.index('id="upload-box"') and page.count('id="upload-box"') == 1
