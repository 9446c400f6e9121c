"""The same API flow on PostgreSQL (skipped unless LEUKODX_TEST_POSTGRES_URL names a scratch database,
e.g. postgresql+psycopg://postgres@/postgres?host=/tmp/pg&port=55432; its tables are dropped first)."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from leukodx.web.app import create_app
from leukodx.web.auth import create_token
from leukodx.web.settings import Settings
from leukodx.web.testing import FakeAnalyzer, field_bytes

URL = os.environ.get("LEUKODX_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="set LEUKODX_TEST_POSTGRES_URL to a scratch PostgreSQL database")


def test_postgresql_works_the_same(tmp_path):
    pytest.importorskip("psycopg")
    engine = create_engine(URL)
    with engine.begin() as conn:
        for t in ("audit_log", "fields", "login_sessions", "cases", "api_tokens", "users", "schema_migrations"):
            conn.execute(text(f"DROP TABLE IF EXISTS {t} CASCADE"))
    engine.dispose()
    app = create_app(Settings(database_url=URL, files_dir=tmp_path / "files"), analyzer=FakeAnalyzer())
    with app.state.ctx.sessions() as db:
        _, token = create_token(db, "pg", "admin")
        db.commit()
    h = {"Authorization": f"Bearer {token}"}
    client = TestClient(app)
    cid = client.post("/api/v1/cases", headers=h, json={"reference": "PG-1"}).json()["id"]
    files = [("files", (f"f{i}.jpg", field_bytes("Pre", i), "image/jpeg")) for i in range(2)]
    up = client.post(f"/api/v1/cases/{cid}/images", headers=h, files=files)
    assert up.status_code == 201, up.text
    fid = up.json()["added"][0]["id"]
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=h, json={
        "case": {"decision": "override", "label": "Pro", "note": "pg"},
        "fields": [{"field_id": fid, "decision": "confirm"}]})
    assert r.status_code == 200 and r.json()["review"]["label"] == "Pro"
    assert client.get("/api/v1/cases", headers=h, params={"status": "reviewed", "flagged": "false"}).status_code == 200
    csv_text = client.get("/api/v1/cases", headers=h, params={"format": "csv", "q": "pg"}).text
    assert "PG-1" in csv_text
    with app.state.ctx.engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("DELETE FROM audit_log"))
    assert client.delete(f"/api/v1/cases/{cid}", headers=h).status_code == 204
    app.state.ctx.engine.dispose()
