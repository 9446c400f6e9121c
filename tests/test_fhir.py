"""The FHIR R4 export of a case (GET /api/v1/cases/{id}/fhir), validated with the `fhir.resources` package
(its R4B models: 8.3.0 ships R5 as the default, R4B and STU3; R4B's DiagnosticReport and Observation are R4's)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from webtools import FakeAnalyzer, field_bytes

R4B = pytest.importorskip("fhir.resources.R4B.diagnosticreport")


@pytest.fixture()
def web(tmp_path, make_app):
    app, clin, admin = make_app(tmp_path, analyzer=FakeAnalyzer(cell_labels=True), lab_name="Lab Hematologi RSUD Contoh",
                                lab_address="Jl. Contoh 1, Jakarta")
    return TestClient(app), clin, admin


def fhir(client, headers, cid):
    r = client.get(f"/api/v1/cases/{cid}/fhir", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    R4B.DiagnosticReport.model_validate(body)  # raises on anything R4 does not allow
    return body


def contained(body, oid):
    return next(r for r in body["contained"] if r["id"] == oid)


def test_fhir_diagnostic_report_preliminary_final_amended(web):
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.specimen import Specimen

    client, clin, admin = web
    cid = client.post("/api/v1/cases", headers=clin, json={"reference": "S-FHIR-1", "stain": "Wright-Giemsa"}).json()["id"]
    up = client.post(f"/api/v1/cases/{cid}/images", headers=clin,
                     files=[("files", (f"f{i}.jpg", field_bytes("Pre", 30 + i), "image/jpeg")) for i in range(2)])
    assert up.status_code == 201
    case = client.get(f"/api/v1/cases/{cid}", headers=clin).json()

    body = fhir(client, clin, cid)
    assert body["resourceType"] == "DiagnosticReport" and body["status"] == "preliminary"
    assert {r["reference"] for r in body["result"]} == {"#call", "#blasts", "#differential"}
    assert {r["id"] for r in body["contained"]} == {"specimen", "call", "blasts", "differential"}
    for oid in ("call", "blasts", "differential"):
        obs = contained(body, oid)
        Observation.model_validate(obs)
        assert obs["status"] == "preliminary"
    Specimen.model_validate(contained(body, "specimen"))
    assert contained(body, "specimen")["note"][0]["text"] == "Stain: Wright-Giemsa"
    assert body["performer"][0]["display"] == "Lab Hematologi RSUD Contoh"
    diff = contained(body, "differential")
    comp = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in diff["component"]}
    assert comp["blast"] == case["differential"]["blast"] and comp["lymphocyte"] == case["differential"]["lymphocyte"]
    blasts = contained(body, "blasts")
    assert blasts["code"]["coding"][0]["code"] == "26446-5"
    if case["blast_percent"] is None:
        assert "dataAbsentReason" in blasts
    else:
        assert blasts["valueQuantity"]["value"] == case["blast_percent"] and blasts["valueQuantity"]["unit"] == "%"

    r = client.patch(f"/api/v1/cases/{cid}/review", headers=clin,
                     json={"case": {"decision": "override", "label": "Pre"}})
    assert r.status_code == 200
    body = fhir(client, clin, cid)
    assert body["status"] == "final" and contained(body, "call")["status"] == "final"
    # the counts stay the AI's pre-classification, preliminary, until a reviewer verifies the differential
    assert contained(body, "blasts")["status"] == contained(body, "differential")["status"] == "preliminary"
    call = contained(body, "call")["valueCodeableConcept"]
    assert call["coding"][0]["code"] == "Pre" and "confirm by flow cytometry" in call["text"]
    assert body["conclusion"].startswith("Morphology consistent with pre-B ALL")
    assert body["resultsInterpreter"][0]["display"] == "token:clinic-pc"

    r = client.patch(f"/api/v1/cases/{cid}/review", headers=admin, json={
        "case": {"decision": "override", "label": "Pro"}, "amendment_reason": "immunophenotype: pro-B"})
    assert r.status_code == 200
    body = fhir(client, clin, cid)
    assert body["status"] == "amended" and contained(body, "call")["valueCodeableConcept"]["coding"][0]["code"] == "Pro"
    assert any("immunophenotype: pro-B" in n["text"] for n in contained(body, "call")["note"])


def test_fhir_of_a_missing_case_is_404(web):
    client, clin, _ = web
    assert client.get("/api/v1/cases/4242/fhir", headers=clin).status_code == 404
    assert client.get("/api/v1/cases/1/fhir").status_code == 401
