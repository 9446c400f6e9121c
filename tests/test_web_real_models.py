"""The web application with the bundled models (skipped until they are bundled)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from leukodx.data.layout import TALEQANI_CLASSES as CLASSES
from leukodx.web.app import create_app
from leukodx.web.auth import create_token
from leukodx.web.settings import Settings, database_url_for
from webtools import field_bytes

ASSETS = Path(__file__).resolve().parents[1] / "src" / "leukodx" / "assets"

pytestmark = pytest.mark.skipif(
    not all((ASSETS / d / "config.json").is_file() for d in ("classifier", "segmenter")),
    reason="the bundled models (src/leukodx/assets/classifier|segmenter/config.json) are not there yet",
)


def test_bundled_models_serve_an_upload(tmp_path):
    app = create_app(Settings(database_url=database_url_for(tmp_path / "real.db")))
    with app.state.ctx.sessions() as db:
        _, token = create_token(db, "real", "clinician")
        db.commit()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:  # runs the start-up: the models load in the background
        deadline = time.time() + 120
        while client.get("/readyz").status_code != 200:
            assert app.state.ctx.service.state != "failed", app.state.ctx.service.error
            assert time.time() < deadline, "the bundled models did not load in 120 s"
            time.sleep(0.2)
        r = client.post("/api/v1/analyze", headers=headers,
                        files=[("files", ("f.jpg", field_bytes("Pro", 3, size=224), "image/jpeg"))])
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["label"] in CLASSES and set(res["probabilities"]) == set(CLASSES)
        cid = client.post("/api/v1/cases", headers=headers, json={"reference": "REAL-1"}).json()["id"]
        up = client.post(f"/api/v1/cases/{cid}/images", headers=headers,
                         files=[("files", ("f.jpg", field_bytes("Pre", 4, size=224), "image/jpeg"))])
        assert up.status_code == 201, up.text
        assert up.json()["added"][0]["overlay_url"]
