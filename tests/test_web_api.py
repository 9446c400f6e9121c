"""The web application's HTTP API and pages through TestClient, with a fake analyzer (no trained model)."""

from __future__ import annotations

import asyncio
import html
import io
import re
import struct
import zlib

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from leukodx.data.layout import TALEQANI_CLASSES as CLASSES
from leukodx.web.app import create_app
from leukodx.web.db import AuditEntry, Field, open_database
from leukodx.web.settings import database_url_for
from webtools import FakeAnalyzer, field_bytes, login

# `make_app` (tests/conftest.py) builds the app on the `db_url` fixture: each test runs on SQLite and PostgreSQL.

@pytest.fixture()
def web(tmp_path, make_app):
    app, clin, admin = make_app(tmp_path)
    return TestClient(app), clin, admin, app


def jpg(label="Pre", seed=0):
    return ("files", (f"{label}-{seed}.jpg", field_bytes(label, seed), "image/jpeg"))


def stored_files(app) -> list[str]:
    return sorted(p.name for p in app.state.ctx.store.root.iterdir())


def field_rows(app) -> int:
    with app.state.ctx.sessions() as db:
        return db.scalar(select(func.count(Field.id)))


def new_case(client, headers, ref="S-2026-0001") -> int:
    r = client.post("/api/v1/cases", headers=headers, json={"reference": ref})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --- access -----------------------------------------------------------------------------------------------

def test_no_token_wrong_token_and_wrong_scheme_are_401(web):
    client, _, _, _ = web
    assert client.get("/api/v1/cases").status_code == 401
    r = client.get("/api/v1/cases", headers={"Authorization": "Bearer ldx_not-a-real-token"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/cases", headers={"Authorization": "Basic YTpi"}).status_code == 401
    assert client.post("/api/v1/analyze", files=[jpg()]).status_code == 401


def test_an_image_link_fetched_with_a_token_notes_the_tokens_use(web):
    from leukodx.web.db import ApiToken

    client, clin, _, app = web
    cid = new_case(client, clin)
    url = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 3)]).json()["added"][0]["image_url"]
    with app.state.ctx.sessions() as db:  # forget the API calls' note: only the image link may set it now
        db.execute(text("UPDATE api_tokens SET last_used_at = NULL"))
        db.commit()
    assert client.get(url, headers=clin).status_code == 200
    with app.state.ctx.sessions() as db:
        assert db.scalar(select(ApiToken.last_used_at).where(ApiToken.name == "clinic-pc")) is not None


def test_clinician_cannot_delete_admin_can(web):
    client, clin, admin, app = web
    cid = new_case(client, clin)
    client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg()])
    assert client.delete(f"/api/v1/cases/{cid}", headers=clin).status_code == 403
    assert client.delete(f"/api/v1/cases/{cid}", headers=admin).status_code == 204
    assert client.get(f"/api/v1/cases/{cid}", headers=clin).status_code == 404
    assert stored_files(app) == []  # the case's images went with it
    with app.state.ctx.sessions() as db:
        actions = db.scalars(select(AuditEntry.action)).all()
    assert "case.delete" in actions


def test_revoked_token_is_refused(web):
    client, clin, _, app = web
    from leukodx.web.db import ApiToken, utcnow

    with app.state.ctx.sessions() as db:
        for row in db.scalars(select(ApiToken).where(ApiToken.name == "clinic-pc")):
            row.revoked_at = utcnow()
        db.commit()
    assert client.get("/api/v1/cases", headers=clin).status_code == 401


# --- analyze ----------------------------------------------------------------------------------------------

def test_analyze_answers_each_image_and_stores_nothing(web):
    client, clin, _, app = web
    r = client.post("/api/v1/analyze", headers=clin, files=[jpg("Pre", 1), jpg("Pro", 2)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 2
    for res in body["results"]:
        assert res["label"] in ("Benign", "Early", "Pre", "Pro")
        assert set(res["probabilities"]) == {"Benign", "Early", "Pre", "Pro"}
        assert abs(sum(res["probabilities"].values()) - 1) < 1e-6
        assert 0 <= res["confidence"] <= 1 and res["cell_count"] >= 1 and res["flag"] in ("ok", "low_confidence")
    assert body["summary"]["n_fields"] == 2
    assert stored_files(app) == [] and field_rows(app) == 0


def test_case_summary_is_the_pipelines_case_rule(web):
    """The web app summarises with leukodx.inference.summary.summarize_case, as `predict` does: the same mean
    probabilities, call, review reasons (e.g. fields that disagree on benign vs malignant)."""
    from leukodx.inference.summary import summarize_case
    from leukodx.inference.types import FieldResult

    client, clin, _, _ = web
    body = client.post("/api/v1/analyze", headers=clin, files=[jpg(c, i) for i, c in enumerate(CLASSES * 2)]).json()
    results = [FieldResult(path=r["name"] if "name" in r else None, label=r["label"], probabilities=r["probabilities"],
                           confidence=r["confidence"], cell_count=r["cell_count"], flag=r["flag"])
               for r in body["results"]]
    want = summarize_case(results, CLASSES, 0.5)
    got = body["summary"]
    assert got["label"] == want.label and got["needs_review"] == want.needs_review and got["reasons"] == want.reasons
    assert got["mean_probabilities"] == pytest.approx(want.mean_probabilities)
    if len({r.label == "Benign" for r in results}) == 2:
        assert any(r.startswith("fields disagree") for r in got["reasons"])


@pytest.mark.parametrize(
    "name,data,ctype,status,words",
    [
        ("notes.txt", b"just some text", "text/plain", 415, "not an image type"),
        ("fake.jpg", b"just some text, named like a JPEG", "image/jpeg", 415, "not an image"),
        ("empty.png", b"", "image/png", 415, "empty"),
        ("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "application/octet-stream", 415, "not"),
    ],
)
def test_non_images_are_415_and_nothing_is_stored(web, name, data, ctype, status, words):
    client, clin, _, app = web
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg(), ("files", (name, data, ctype))])
    assert r.status_code == status, r.text
    assert words in r.text.lower() and "Nothing was stored" in r.json()["message"]
    assert stored_files(app) == [] and field_rows(app) == 0


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_and_truncated_image_get_clear_messages(web):
    client, clin, _, app = web
    cid = new_case(client, clin)
    bomb = _png_header_only(100_000, 100_000)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[("files", ("bomb.png", bomb, "image/png"))])
    assert r.status_code == 413 and "downscale" in r.text.lower()
    whole = field_bytes("Pre", 3)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                    files=[("files", ("cut.jpg", whole[: len(whole) // 2], "image/jpeg"))])
    assert r.status_code == 422 and "truncated" in r.text
    assert stored_files(app) == [] and field_rows(app) == 0


def test_too_big_and_too_many_are_413(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, max_file_mb=0.02, max_files=2)
    client = TestClient(app)
    big = field_bytes("Pro", 1, size=256, fmt="PNG")
    assert len(big) > 0.02 * 2**20
    r = client.post("/api/v1/analyze", headers=clin, files=[("files", ("big.png", big, "image/png"))])
    assert r.status_code == 413 and "MB limit" in r.text
    r = client.post("/api/v1/analyze", headers=clin, files=[jpg("Pre", i) for i in range(3)])
    assert r.status_code == 413 and "at most 2" in r.text
    # a body over the whole-request limit is refused before it is read
    r = client.post("/api/v1/analyze", headers={**clin, "Content-Length": str(10**9)}, content=b"x")
    assert r.status_code == 413


def test_path_like_names_are_stored_by_content_hash(web):
    client, clin, _, app = web
    cid = new_case(client, clin)
    data = field_bytes("Early", 5)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                    files=[("files", ("../../../etc/passwd.jpg", data, "image/jpeg")),
                           ("files", ("..\\..\\win\\field 7.jpg", field_bytes("Pro", 6), "image/jpeg"))])
    assert r.status_code == 201, r.text
    names = [a["name"] for a in r.json()["added"]]
    assert names == ["passwd.jpg", "field 7.jpg"]
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    assert f"{digest}.jpg" in stored_files(app)
    assert all(re.fullmatch(r"[0-9a-f]{64}\.(jpg|png)", n) for n in stored_files(app))
    assert client.get("/files/..%2F..%2Fweb.db").status_code in (401, 404)


# --- cases and review -------------------------------------------------------------------------------------

def test_case_upload_review_keeps_ai_and_reviewer_decision(web):
    client, clin, _, app = web
    cid = new_case(client, clin, "S-77")
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1), jpg("Pro", 2)])
    assert r.status_code == 201, r.text
    case = r.json()["case"]
    assert case["ai"]["n_fields"] == 2 and case["status"] == "unreviewed"
    fields = r.json()["added"]
    assert all(f["overlay_url"] and f["heatmap_url"] is None for f in fields)  # heat maps: on first view
    # the words pages (and app.js) show: the confidence as words.model_percent, the blast % with one decimal
    assert all(re.fullmatch(r"([<>] )?\d+ %", f["confidence_words"]) for f in fields)
    assert case["blast_percent_words"] == ("–" if case["blast_percent"] is None else f"{case['blast_percent']:.1f} %")
    f0 = fields[0]
    assert app.state.ctx.service.classes == ["Benign", "Early", "Pre", "Pro"]  # the bundled classifier's config
    other = next(c for c in app.state.ctx.service.classes if c != f0["label"])
    ai_case_label = case["ai"]["label"]
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={
        "case": {"decision": "confirm", "note": "agree"},
        "fields": [{"field_id": f0["id"], "decision": "override", "label": other, "note": "nuclear outline"}],
    })
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "reviewed" and out["review"]["label"] == ai_case_label
    assert out["review"]["reviewed_by"] == "token:clinic-pc"
    g0 = next(f for f in out["fields"] if f["id"] == f0["id"])
    assert g0["label"] == f0["label"] and g0["review"]["label"] == other and g0["review"]["decision"] == "override"
    # overriding needs one of the model's classes, and the answer names them; an unknown field is 404
    bad = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={"case": {"decision": "override"}})
    assert bad.status_code == 422 and bad.json()["detail"] == (
        "Overriding the case needs one of the model's classes. Choose one of: Benign, Early, Pre, Pro.")
    bad = client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json={
        "fields": [{"field_id": f0["id"], "decision": "override", "label": "Lymphoma"}]})
    assert bad.status_code == 422 and bad.json()["detail"] == (
        f"Overriding field {f0['id']} needs one of the model's classes; 'Lymphoma' is not one of them. "
        "Choose one of: Benign, Early, Pre, Pro.")
    missing = client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                           json={"fields": [{"field_id": 99999, "decision": "confirm"}]})
    assert missing.status_code == 404
    # the failed reviews changed nothing
    assert client.get(f"/api/v1/cases/{cid}", headers=clin).json()["review"]["label"] == ai_case_label


def test_the_classes_are_the_analysers_not_written_into_the_web_app(tmp_path, make_app):
    """A model with other classes: the review accepts and the pages offer its classes, and only those."""
    from webtools import login

    class TwoClasses(FakeAnalyzer):
        def __init__(self):
            super().__init__()
            self.classes = ["Benign", "Blast"]

    app, clin, _ = make_app(tmp_path, analyzer=TwoClasses())
    client = TestClient(app)
    cid = new_case(client, clin)
    f0 = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1)]).json()["added"][0]
    assert set(f0["probabilities"]) == {"Benign", "Blast"}
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                     json={"fields": [{"field_id": f0["id"], "decision": "override", "label": "Pre"}]})
    assert r.status_code == 422 and r.json()["detail"].endswith("Choose one of: Benign, Blast.")
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                     json={"fields": [{"field_id": f0["id"], "decision": "override", "label": "Blast"}]})
    assert r.status_code == 200 and r.json()["fields"][0]["review"]["label"] == "Blast"
    assert r.json()["reviewed_fields_label"] == "Blast"
    assert login(client).status_code == 303
    page = client.get(f"/cases/{cid}").text
    assert re.findall(r'<option value="(\w+)"', page)[:2] == ["Benign", "Blast"] and 'value="Pre"' not in page


def test_before_the_models_load_the_classes_come_from_the_classifier_config(tmp_path):
    import json

    from leukodx.assets import default_model_dir
    from leukodx.web.analysis import AnalysisService
    from leukodx.web.settings import Settings

    service = AnalysisService(Settings(database_url=database_url_for(tmp_path / "w.db")))
    assert service.analyzer is None and service.classes == ["Benign", "Early", "Pre", "Pro"]
    other = tmp_path / "clf"
    other.mkdir()
    config = json.loads((default_model_dir("classify") / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "classes": ["A", "B"]}))
    service = AnalysisService(Settings(database_url=database_url_for(tmp_path / "w.db"), classifier_dir=other))
    assert service.classes == ["A", "B"]
    assert AnalysisService(Settings(classifier_dir=tmp_path / "none")).classes == []  # unreadable: none offered


def test_while_the_models_load_the_case_says_so_rather_than_guess(web):
    client, clin, _, app = web
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1), jpg("Benign", 2)])
    fid = r.json()["added"][0]["id"]
    review = {"fields": [{"field_id": fid, "decision": "override", "label": "Benign"}]}
    assert client.patch(f"/api/v1/cases/{cid}/review", headers=clin, json=review).status_code == 200
    service = app.state.ctx.service
    analyzer, service.analyzer, service.state = service.analyzer, None, "loading"  # as while loading
    try:
        d = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
        assert d["ai"]["models_loading"] is True and d["ai"]["confidence_threshold"] is None
        assert d["ai"]["confident"] is False and d["reviewed_fields_label"] is None and d["n_fields_reviewed"] == 1
        assert client.get("/api/v1/cases", headers=clin).json()["cases"][0]["ai"]["models_loading"] is True
        assert login(client).status_code == 303
        page = client.get(f"/cases/{cid}").text
        assert 'id="models-loading"' in page and "The models are still loading" in page
        assert 'id="ai-not-confident"' not in page and 'id="reviewed-call"' not in page
    finally:
        service.analyzer, service.state = analyzer, "ready"
    d = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert d["ai"]["models_loading"] is False and d["ai"]["confidence_threshold"] == 0.5
    assert d["reviewed_fields_label"] in CLASSES


def test_case_list_filters_and_csv(web):
    client, clin, _, _ = web
    a = new_case(client, clin, "ALPHA-1")
    b = new_case(client, clin, "=cmd|' /C calc'!A0")
    client.post(f"/api/v1/cases/{a}/images", headers=clin, files=[jpg("Pre", 1)])
    client.patch(f"/api/v1/cases/{a}/review", headers=clin, json={"case": {"decision": "confirm"}})
    r = client.get("/api/v1/cases", headers=clin, params={"status": "unreviewed"})
    assert [c["id"] for c in r.json()["cases"]] == [b]
    r = client.get("/api/v1/cases", headers=clin, params={"q": "alpha"})
    assert [c["id"] for c in r.json()["cases"]] == [a]
    r = client.get("/api/v1/cases", headers=clin, params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    import csv

    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["reference"] for row in rows} == {"ALPHA-1", "'=cmd|' /C calc'!A0"}  # no formula injection
    assert next(row for row in rows if row["case_id"] == str(a))["status"] == "reviewed"


def test_bad_case_input_is_422(web):
    client, clin, _, _ = web
    assert client.post("/api/v1/cases", headers=clin, json={"reference": ""}).status_code == 422
    assert client.post("/api/v1/cases", headers=clin, json={"reference": "   "}).status_code == 422
    assert client.post("/api/v1/cases", headers=clin, json={}).status_code == 422
    assert client.get("/api/v1/cases/424242", headers=clin).status_code == 404


# --- storage ----------------------------------------------------------------------------------------------

def test_audit_log_is_append_only_and_migrations_are_idempotent(web, tmp_path):
    client, clin, _, app = web
    new_case(client, clin)
    engine = app.state.ctx.engine
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() > 0
        for stmt in ("UPDATE audit_log SET actor='x'", "DELETE FROM audit_log"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(text(stmt))
            conn.rollback()
    engine2, _ = open_database(database_url_for(tmp_path / "web.db"))  # again: nothing to apply
    with engine2.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_migrations")).scalars().all() == [1]
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def test_sweep_removes_files_without_rows(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path)
    store = app.state.ctx.store
    orphan = store.put(b"leftover of a crash", "png")
    (store.root / ".tmp-abc").write_bytes(b"half")
    client = TestClient(app)
    cid = new_case(client, clin)
    client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg()])
    kept = set(stored_files(app)) - {orphan, ".tmp-abc"}
    app2 = create_app(app.state.ctx.settings, analyzer=FakeAnalyzer())
    assert set(stored_files(app2)) == kept


# --- service ----------------------------------------------------------------------------------------------

def test_health_and_readiness(tmp_path, make_app):
    app, _, _ = make_app(tmp_path)
    client = TestClient(app)
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    svc = app.state.ctx.service
    svc.state, svc.error = "failed", "no models"
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"] == "no models"


def test_saturated_server_answers_503(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, analyzer=FakeAnalyzer(delay_s=0.5), analysis_workers=1, analysis_queue=0)
    body = field_bytes("Pre", 1)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await asyncio.gather(*[
                ac.post("/api/v1/analyze", headers=clin, files=[("files", ("a.jpg", body, "image/jpeg"))])
                for _ in range(3)
            ])

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes[0] == 200 and 503 in codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] and "busy" in busy.json()["detail"]


def test_analysis_timeout_is_504(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, analyzer=FakeAnalyzer(delay_s=1.0), analysis_timeout_s=0.2)
    r = TestClient(app).post("/api/v1/analyze", headers=clin, files=[jpg()])
    assert r.status_code == 504 and "longer than" in r.text

def test_request_time_limit_is_504(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, analyzer=FakeAnalyzer(delay_s=1.5), request_timeout_s=0.3)
    r = TestClient(app).post("/api/v1/analyze", headers=clin, files=[jpg()])
    assert r.status_code == 504 and "took over" in r.text


def test_concurrent_uploads_to_one_case_lose_no_field(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, analysis_workers=2)
    client = TestClient(app)
    cid = new_case(client, clin)

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await asyncio.gather(*[
                ac.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 50 + i)]) for i in range(8)
            ])

    assert [r.status_code for r in asyncio.run(burst())] == [201] * 8
    case = client.get(f"/api/v1/cases/{cid}", headers=clin).json()
    assert case["ai"]["n_fields"] == len(case["fields"]) == 8
    assert case["ai"]["summary"]["n_fields"] == 8


def test_an_analyzer_failure_is_a_clear_500_and_stores_nothing(tmp_path, make_app):
    class Broken(FakeAnalyzer):
        def analyze(self, image, *, name=None, heatmap=False):
            raise RuntimeError("model exploded")

    app, clin, _ = make_app(tmp_path, analyzer=Broken())
    client = TestClient(app)
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg()])
    assert r.status_code == 500 and "model exploded" in r.json()["detail"] and "Nothing was stored" in r.text
    assert stored_files(app) == [] and field_rows(app) == 0


def test_heat_maps_with_every_upload_when_configured(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, heatmap_on_upload=True)
    client = TestClient(app)
    cid = new_case(client, clin)
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg()])
    assert r.status_code == 201 and r.json()["added"][0]["heatmap_url"].endswith(".png")


def test_the_labs_scale_reaches_the_analysis_and_a_field_without_leukocytes_says_so(tmp_path, make_app):
    """Issue 28: LEUKODX_UM_PER_PX, an upload's own um_per_px (which wins; a bad one is refused in one line), and a
    field in which no leukocyte is found: no call, no flag, and the API, page, report, CSV and FHIR say why."""
    from leukodx.inference.pipeline import NO_LEUKOCYTE

    class NoLeukocyteIn(FakeAnalyzer):
        scales: list = []

        def analyze(self, image, *, name=None, heatmap=False, um_per_px=None):
            r = super().analyze(image, name=name, heatmap=heatmap, um_per_px=um_per_px)
            self.scales.append(um_per_px)
            if name and name.startswith("empty"):
                r.label, r.confidence, r.cells, r.cell_count, r.no_call_reason = None, 0.0, [], 0, NO_LEUKOCYTE
            if name and name.startswith("crop"):
                r.um_per_px, r.scale_source = 0.25, "estimated from the leukocyte's nucleus size"
            if name and name.startswith("doubt"):
                r.scale_warning = "At the given 0.2 um per pixel the red cells measure 3.0 um across, not about 7.5."
            return r

    analyzer = NoLeukocyteIn()
    app, clin, _ = make_app(tmp_path, analyzer, um_per_px=0.1)
    client = TestClient(app)
    cid = new_case(client, clin)
    assert client.post(f"/api/v1/cases/{cid}/images", headers=clin, files=[jpg("Pre", 1)]).status_code == 201
    assert analyzer.scales == [0.1]  # the setting
    r = client.post(f"/api/v1/cases/{cid}/images", headers=clin, data={"um_per_px": "0.2"},
                    files=[("files", ("empty.jpg", field_bytes("Pre", 2), "image/jpeg"))])
    assert r.status_code == 201 and analyzer.scales[-1] == 0.2  # the upload's own wins
    f = r.json()["added"][0]
    assert f["label"] is None and f["flag"] == "ok" and f["decision_suggested"] == "unassessable"
    assert f["flag_words"]["problem"] == NO_LEUKOCYTE
    bad = client.post(f"/api/v1/cases/{cid}/images", headers=clin, data={"um_per_px": "abc"}, files=[jpg("Pre", 3)])
    assert bad.status_code == 400 and "micrometres per image pixel" in bad.json()["detail"]
    assert len(analyzer.scales) == 2  # refused before any analysis
    csv_text = client.get(f"/api/v1/fields.csv?case_id={cid}", headers=clin).text
    assert "No leukocyte found in this field" in csv_text
    fhir = client.get(f"/api/v1/cases/{cid}/fhir", headers=clin).text
    assert "No leukocyte found in this field" in fhir
    login(client)
    for url in (f"/cases/{cid}?field={f['id']}", f"/cases/{cid}/report"):
        page = client.get(url)
        assert page.status_code == 200 and "No leukocyte found in this field" in page.text, url
    viewer = client.get(f"/cases/{cid}?field={f['id']}").text.split('id="viewer"')[1]
    assert "No leukocyte found: no call" in viewer and "No flags" not in viewer  # not an all-clear badge
    client.get(f["heatmap_on_demand_url"])  # drawn later: at the scale the upload gave
    assert analyzer.scales[-1] == 0.2
    # the technical details say where the scale came from (they said "from the red cells" whatever its source)
    assert "Scale given by the lab: 0.200 µm per pixel" in client.get(f"/cases/{cid}?field={f['id']}").text
    crop = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                       files=[("files", ("crop.jpg", field_bytes("Pre", 4), "image/jpeg"))]).json()["added"][0]
    page = html.unescape(client.get(f"/cases/{cid}?field={crop['id']}").text)
    assert "Scale estimated from the leukocyte's nucleus size (a red cell taken as 7.5 µm across)" in page
    assert "Scale from the red cells" not in page and "given by the lab" not in page
    assert 'id="scale-warning"' not in page
    doubt = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                        files=[("files", ("doubt.jpg", field_bytes("Pre", 5), "image/jpeg"))]).json()["added"][0]
    page = html.unescape(client.get(f"/cases/{cid}?field={doubt['id']}").text)
    assert 'id="scale-warning"' in page and "the red cells measure 3.0 um across, not about 7.5." in page
    with pytest.raises(Exception, match="micrometres per image pixel"):
        make_app(tmp_path / "bad", analyzer, um_per_px="-1")
