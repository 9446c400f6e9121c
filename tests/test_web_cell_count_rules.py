"""What the case's differential counts (on SQLite and PostgreSQL): a cell cut by the field's edge is shown but
not counted unless a reviewer classes it, and the differential cannot be verified while a cell of a counted
field is one the AI left unidentified."""

from __future__ import annotations

import dataclasses

from fastapi.testclient import TestClient

from leukodx.inference.types import FieldResult
from webtools import FakeAnalyzer, field_bytes


class EdgeAndUnidentified(FakeAnalyzer):
    """Every cell a blast (95 %), but the first cut by the field's edge and the second left unidentified."""

    def analyze(self, image, *, name=None, heatmap=False) -> FieldResult:
        r = super().analyze(image, name=name, heatmap=heatmap)
        while len(r.cells) < 4:  # four cells at least (copies with new ids)
            r.cells.append(dataclasses.replace(r.cells[-1], id=r.cells[-1].id + 1))
        r.cell_count = len(r.cells)
        for c in r.cells:
            c.ai_label, c.ai_confidence = "blast", 0.95
        r.cells[0].touches_border = True
        r.cells[1].ai_label, r.cells[1].ai_confidence = "unidentified", 0.3
        r.flag, r.flag_reason = "ok", ""
        return r


def one_field_case(client, headers) -> dict:
    cid = client.post("/api/v1/cases", headers=headers, json={"reference": "EDGE-1"}).json()["id"]
    r = client.post(f"/api/v1/cases/{cid}/images", headers=headers,
                    files=[("files", ("f.jpg", field_bytes("Pre", 3, size=224), "image/jpeg"))])
    assert r.status_code == 201, r.text
    return client.get(f"/api/v1/cases/{cid}", headers=headers).json()


def test_edge_cells_are_not_counted_until_classed_and_unidentified_cells_block_verification(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, analyzer=EdgeAndUnidentified())
    with TestClient(app) as client:
        case = one_field_case(client, clin)
        cid, (f,) = case["id"], case["fields"]
        n = len(f["cells"])
        assert n >= 3, "the synthetic field needs three cells or more"
        edge, unid = f["cells"][0], f["cells"][1]
        assert edge["touches_border"] and edge["final_label"] == "edge" and edge["ai_label"] == "blast"
        assert unid["final_label"] == "unidentified"
        # the edge cell is in neither differential's count, the unidentified one is not counted either
        assert case["differential"]["edge"] == case["ai_differential"]["edge"] == 1
        assert case["n_cells_counted"] == n - 2 and case["differential"]["blast"] == n - 2
        assert case["blast_percent"] == 100.0
        if case["ai"]["label"] != "Benign":
            assert not any("the call is Benign" in w for w in case["warnings"])

        r = client.post(f"/api/v1/cases/{cid}/differential/verify", headers=clin, json={})
        assert r.status_code == 422, r.text
        assert "no class yet" in r.json()["detail"] and "unidentified" in r.json()["detail"]
        assert "gallery" in r.json()["detail"]

        # a reviewer classes both: the edge cell now counts as what the reviewer said
        r = client.patch(f"/api/v1/cases/{cid}/cells", headers=clin, json={"cells": [
            {"field_id": f["id"], "id": edge["id"], "label": "lymphocyte"},
            {"field_id": f["id"], "id": unid["id"], "label": "blast"}]})
        assert r.status_code == 200, r.text
        case = r.json()
        assert case["differential"]["edge"] == 0 and case["ai_differential"]["edge"] == 1
        assert case["n_cells_counted"] == n and case["differential"]["lymphocyte"] == 1
        assert case["blast_percent"] == round(100 * (n - 1) / n, 1)
        r = client.post(f"/api/v1/cases/{cid}/differential/verify", headers=clin, json={})
        assert r.status_code == 200 and r.json()["differential_verified"], r.text


class BenignWithBlasts(EdgeAndUnidentified):
    """Every field called Benign (90 %) while its cells are blasts."""

    def analyze(self, image, *, name=None, heatmap=False) -> FieldResult:
        r = super().analyze(image, name=name, heatmap=heatmap)
        r.probabilities = {c: (0.9 if c == "Benign" else 0.1 / (len(self.classes) - 1)) for c in self.classes}
        r.label, r.confidence = "Benign", 0.9
        return r


def test_a_benign_call_with_20_percent_blasts_or_more_is_a_sign_off_warning(tmp_path, make_app):
    app, clin, _ = make_app(tmp_path, analyzer=BenignWithBlasts())
    with TestClient(app) as client:
        case = one_field_case(client, clin)
        assert case["ai"]["label"] == "Benign" and case["blast_percent"] >= 20
        assert any("blasts (20 % or more" in w and "the call is Benign" in w for w in case["warnings"])
