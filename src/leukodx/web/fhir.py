"""The case as a FHIR R4 DiagnosticReport (JSON built by hand: the clinic install needs no FHIR library; the
tests validate it with `fhir.resources`).

    DiagnosticReport  status: preliminary (not signed off) | final (signed off) | amended (changed after sign-off)
      contained: Specimen, Observation "call" (the class call), "blasts" (blast %, LOINC 26446-5),
                 "differential" (the differential count, LOINC panel 24318-8, one component per cell class)
      result: the three Observations; conclusion: the call in a lab's words

Codes: LOINC where one fits; leukodx's own classes under `urn:leukodx:*` code systems (the lab maps them).
"""

from __future__ import annotations

from leukodx import __version__
from leukodx.inference.cell_classes import CELL_CLASS_WORDS, NOT_COUNTED
from leukodx.web import cells as cell_logic
from leukodx.web import words
from leukodx.web.cases import counted_cells, is_signed_off, iso
from leukodx.web.db import Case

LOINC = "http://loinc.org"
CLASS_SYSTEM = "urn:leukodx:smear-class"
CELL_SYSTEM = "urn:leukodx:cell-class"
HEMATOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM", "display": "Hematology"}
LAB = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory",
       "display": "Laboratory"}


def report_status(case: Case) -> str:
    if not is_signed_off(case):
        return "preliminary"
    return "amended" if case.amendments else "final"


def _observation(oid: str, status: str, code: dict, effective: str | None, **value) -> dict:
    obs = {"resourceType": "Observation", "id": oid, "status": status,
           "category": [{"coding": [LAB]}], "code": code}
    if effective:
        obs["effectiveDateTime"] = effective
    obs.update(value)
    return obs


def diagnostic_report(case: Case, settings) -> dict:
    status = report_status(case)
    signed = is_signed_off(case)
    effective = iso(case.created_at)
    issued = iso(case.reviewed_at if signed else case.updated_at)
    label = case.review_label if signed else case.ai_label
    cs = cell_logic.cell_summary(counted_cells(case.fields))
    who = (case.reviewed_by or "the reviewing clinician") if signed else "nobody yet (AI suggestion only)"
    notes = [f"AI-assisted (leukodx {__version__}); reviewed by {who}."]
    if case.ai_label:
        notes.append(f"AI suggestion: {case.ai_label}, confidence {100 * (case.ai_confidence or 0):.0f} %.")
    for a in case.amendments or []:
        notes.append(f"Amendment {a.get('n')} by {a.get('by')} at {a.get('at')}: {a.get('reason')} ({a.get('what')}).")

    call: dict = {"text": words.call_words(label)}
    if label:
        call["coding"] = [{"system": CLASS_SYSTEM, "code": label, "display": words.CLASS_NAMES.get(label, label)}]
    obs_call = _observation(
        "call", status, {"coding": [{"system": "urn:leukodx:observation", "code": "smear-class",
                                     "display": "Blood smear morphology: ALL subtype call"}],
                         "text": "Blood smear morphology (ALL subtype call)"}, effective,
        valueCodeableConcept=call, note=[{"text": n} for n in notes])
    blast = {"text": "Blasts/100 leukocytes in Blood",
             "coding": [{"system": LOINC, "code": "26446-5", "display": "Blasts/100 leukocytes in Blood"}]}
    if cs["blast_percent"] is None:
        obs_blast = _observation("blasts", status, blast, effective, dataAbsentReason={
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed",
                        "display": "Not Performed"}], "text": "No cell has a class yet"})
    else:
        obs_blast = _observation("blasts", status, blast, effective, valueQuantity={
            "value": cs["blast_percent"], "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"})
    counted = cs["n_counted"]
    components = []
    for cls, n in cs["differential"].items():
        if cls == cell_logic.UNCLASSIFIED and n == 0:
            continue
        components.append({
            "code": {"coding": [{"system": CELL_SYSTEM, "code": cls,
                                 "display": cell_logic.WORDS.get(cls, CELL_CLASS_WORDS.get(cls, cls))}],
                     "text": cell_logic.WORDS.get(cls, cls)},
            "valueInteger": int(n),
        })
    obs_diff = _observation(
        "differential", status,
        {"coding": [{"system": LOINC, "code": "24318-8", "display": "Manual Differential panel - Blood"}],
         "text": "Differential count of the reviewed leukocytes"}, effective,
        valueInteger=int(counted), component=components,
        note=[{"text": f"{cs['n_cells']} leukocytes outlined, {cs['n_cells_reviewed']} reviewed; "
                       f"{counted} counted (not counted: {', '.join(NOT_COUNTED)} and unclassified). AI's own "
                       f"blast %: {'none' if cs['ai_blast_percent'] is None else cs['ai_blast_percent']}."}])
    specimen = {"resourceType": "Specimen", "id": "specimen", "type": {"text": case.specimen or "Peripheral blood"},
                "identifier": [{"system": "urn:leukodx:smear-reference", "value": case.reference}]}
    if case.stain:
        specimen["note"] = [{"text": f"Stain: {case.stain}"}]
    report: dict = {
        "resourceType": "DiagnosticReport",
        "id": f"leukodx-case-{case.id}",
        "identifier": [{"system": "urn:leukodx:case", "value": str(case.id)},
                       {"system": "urn:leukodx:smear-reference", "value": case.reference}],
        "status": status,
        "category": [{"coding": [HEMATOLOGY]}],
        "code": {"text": "Peripheral blood smear review (AI-assisted)"},
        "performer": [{"display": settings.lab_name}],
        "specimen": [{"reference": "#specimen"}],
        "contained": [specimen, obs_call, obs_blast, obs_diff],
        "result": [{"reference": "#call"}, {"reference": "#blasts"}, {"reference": "#differential"}],
        "conclusion": words.call_words(label) if label else "No call: no field could be analysed.",
    }
    if effective:
        report["effectiveDateTime"] = effective
    if issued:
        report["issued"] = issued
    if signed and case.reviewed_by:
        report["resultsInterpreter"] = [{"display": case.reviewed_by}]
    if label:
        report["conclusionCode"] = [{"coding": [{"system": CLASS_SYSTEM, "code": label,
                                                 "display": words.CLASS_NAMES.get(label, label)}]}]
    return report
