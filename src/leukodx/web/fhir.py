"""The case as a FHIR R4 DiagnosticReport (JSON built by hand: the clinic install needs no FHIR library; the
tests validate it with `fhir.resources`). What it holds, and how an unverified differential is coded:
docs/review.md, "Report and export"; leukodx's own classes are coded under `urn:leukodx:*` systems (the lab
maps them).
"""

from __future__ import annotations

from leukodx import __version__
from leukodx.inference.cell_classes import CELL_CLASS_WORDS, NOT_COUNTED
from leukodx.web import cells as cell_logic
from leukodx.web import words
from leukodx.web.cases import rules
from leukodx.web.db import Case

CLASS_SYSTEM = "urn:leukodx:smear-class"
CELL_SYSTEM = "urn:leukodx:cell-class"
# LOINC, as the differential panels list them (e.g. the value sets of the CIBMTR reporting IG, built from LOINC):
# 57023-4 "Auto Differential panel - Blood": an analyser's (automated) differential -> the AI's, not verified
# 24318-8 "Manual Differential panel - Blood": a differential counted by a microscopist -> verified by one
# 709-6   "Blasts/100 leukocytes in Blood by Manual count" -> the verified blast %
# 26446-5 "Blasts/100 leukocytes in Blood" (method unspecified; LOINC's automated differential panel has no blast
#         term, analysers only flag blasts) -> the AI's blast %, its method given as automated, not verified
AUTO_DIFFERENTIAL = {"system": "http://loinc.org", "code": "57023-4", "display": "Auto Differential panel - Blood"}
MANUAL_DIFFERENTIAL = {"system": "http://loinc.org", "code": "24318-8", "display": "Manual Differential panel - Blood"}
BLASTS_MANUAL = {"system": "http://loinc.org", "code": "709-6",
                 "display": "Blasts/100 leukocytes in Blood by Manual count"}
BLASTS_UNSPECIFIED = {"system": "http://loinc.org", "code": "26446-5", "display": "Blasts/100 leukocytes in Blood"}
METHOD_SYSTEM = "urn:leukodx:differential-method"
ID_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
HEMATOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM", "display": "Hematology"}
LAB = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory",
       "display": "Laboratory"}


def report_status(case: Case) -> str:
    if not rules.is_signed_off(case):
        return "preliminary"
    return "amended" if case.amendments else "final"


def _observation(oid: str, status: str, code: dict, effective: str | None, **value) -> dict:
    obs = {"resourceType": "Observation", "id": oid, "status": status,
           "category": [{"coding": [LAB]}], "code": code}
    if effective:
        obs["effectiveDateTime"] = effective
    obs.update(value)
    return obs


def _method(case: Case) -> tuple[dict, str]:
    """The differential's method (a CodeableConcept) and its note: automated and not verified, or verified."""
    if case.differential_verified:
        at = rules.iso(case.differential_verified_at) or ""
        text_ = f"Verified by {case.differential_verified_by}" + (f" at {at}" if at else "") + (
            ": AI pre-classification checked cell by cell and corrected by the reviewer"
            + (f" ({case.differential_note})" if case.differential_note else "") + ".")
        return {"coding": [{"system": METHOD_SYSTEM, "code": "verified",
                            "display": "AI pre-classification verified by a reviewer"}], "text": text_}, text_
    text_ = "AI pre-classification, not verified: the counts are the AI's classes with the reviewer's corrections so far."
    return {"coding": [{"system": METHOD_SYSTEM, "code": "ai-not-verified",
                        "display": "AI pre-classification, not verified"}], "text": text_}, text_


def _patient(case: Case, settings) -> tuple[dict, dict] | None:
    """The contained Patient and the report's subject Reference, both with the patient identifier (so that a
    hospital system files the report to the patient it knows by it)."""
    if not case.patient_id:
        return None
    ident = {"type": {"coding": [{"system": ID_TYPES, "code": "MR", "display": "Medical record number"}]},
             "system": settings.patient_id_system, "value": case.patient_id}
    patient = {"resourceType": "Patient", "id": "patient", "identifier": [ident]}
    return patient, {"reference": "#patient", "type": "Patient", "identifier": ident}


def diagnostic_report(case: Case, settings, threshold: float | None = None) -> dict:
    """`threshold`: the AI's confident-call threshold (rules.confidence_threshold), for whose call it is."""
    status = report_status(case)
    signed = rules.is_signed_off(case)
    verified = bool(case.differential_verified)
    # the counts are final (or amended) with the report only once a reviewer verified them; until then they are
    # the AI's pre-classification: preliminary (the code, method and note say so too)
    count_status = status if verified else "preliminary"
    effective = rules.iso(case.created_at)
    issued = rules.iso(case.reviewed_at if signed else case.updated_at)
    label = case.review_label if signed else case.ai_label
    cs = cell_logic.cell_summary(rules.counted_cells(case.fields))
    who = (case.reviewed_by or "the reviewing clinician") if signed else "nobody yet (AI suggestion only)"
    method, method_note = _method(case)
    notes = [f"AI-assisted (leukodx {__version__}); reviewed by {who}."]
    if case.fields:
        notes.append(f"Cell model version: {words.cell_model_words(f.cell_model for f in case.fields)}.")
    if case.ai_label:
        notes.append(f"AI suggestion: {case.ai_label}, confidence {words.model_percent(case.ai_confidence or 0)}.")
    if signed:
        notes.append(f"Reviewer's call: {case.review_label} ({words.BASIS_WORDS.get(rules.case_basis(case, threshold) or '')}).")
    calls = "; ".join(f"field {i}: {f.review_label} ({words.BASIS_WORDS.get(rules.field_basis(f) or '')})"
                      for i, f in enumerate(case.fields, start=1) if f.review_label)
    notes += [f"Field calls: {calls}."] if calls else []
    left_out = rules.unassessable_fields(case)
    if left_out:
        notes.append("Left out as unassessable: " + "; ".join(
            f"field {u['number']}{' (' + u['name'] + ')' if u['name'] else ''}: {u['reason']}" for u in left_out) + ".")
    for a in case.amendments or []:
        notes.append(f"Amendment {a.get('n')} by {a.get('by')} at {a.get('at')}: {a.get('reason')} ({a.get('what')}).")
    patient = _patient(case, settings)
    subject = {"subject": patient[1]} if patient else {}

    call: dict = {"text": words.call_words(label)}
    if label:
        call["coding"] = [{"system": CLASS_SYSTEM, "code": label, "display": words.CLASS_NAMES.get(label, label)}]
    obs_call = _observation(
        "call", status, {"coding": [{"system": "urn:leukodx:observation", "code": "smear-class",
                                     "display": "Blood smear morphology: ALL subtype call"}],
                         "text": "Blood smear morphology (ALL subtype call)"}, effective,
        valueCodeableConcept=call, note=[{"text": n} for n in notes], **subject)
    blast = {"text": "Blasts/100 leukocytes in Blood" + ("" if verified else " (AI pre-classification, not verified)"),
             "coding": [BLASTS_MANUAL if verified else BLASTS_UNSPECIFIED]}
    value = {"dataAbsentReason": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed",
        "display": "Not Performed"}], "text": "No cell has a class yet"}} if cs["blast_percent"] is None else {
        "valueQuantity": {"value": cs["blast_percent"], "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}
    obs_blast = _observation("blasts", count_status, blast, effective, **value, method=method,
                             note=[{"text": method_note}], **subject)
    counted = cs["n_counted"]
    components = []
    for cls, n in cs["differential"].items():
        if cls in (cell_logic.UNCLASSIFIED, cell_logic.EDGE) and n == 0:
            continue
        components.append({
            "code": {"coding": [{"system": CELL_SYSTEM, "code": cls,
                                 "display": cell_logic.WORDS.get(cls, CELL_CLASS_WORDS.get(cls, cls))}],
                     "text": cell_logic.WORDS.get(cls, cls)},
            "valueInteger": int(n),
        })
    target = case.differential_target or 100
    obs_diff = _observation(
        "differential", count_status,
        {"coding": [MANUAL_DIFFERENTIAL if verified else AUTO_DIFFERENTIAL],
         "text": "Differential count, verified by the reviewer" if verified else
         "Differential count: AI pre-classification, not verified"}, effective,
        valueInteger=int(counted), component=components, method=method,
        note=[{"text": method_note},
              {"text": f"{cs['n_cells']} leukocytes outlined, {cs['n_cells_reviewed']} reclassified by the reviewer; "
                       f"{counted} counted of a target of {target} (not counted: {', '.join(NOT_COUNTED)} and "
                       f"unclassified). AI's own blast %: "
                       f"{'none' if cs['ai_blast_percent'] is None else cs['ai_blast_percent']}."}], **subject)
    specimen = {"resourceType": "Specimen", "id": "specimen", "type": {"text": case.specimen or "Peripheral blood"},
                "identifier": [{"system": "urn:leukodx:smear-reference", "value": case.reference}]}
    if case.accession:
        specimen["accessionIdentifier"] = {"system": settings.accession_system, "value": case.accession}
    if patient:
        specimen["subject"] = patient[1]
    if case.stain:
        specimen["note"] = [{"text": f"Stain: {case.stain}"}]
    identifiers: list[dict] = [{"system": "urn:leukodx:case", "value": str(case.id)},
                   {"system": "urn:leukodx:smear-reference", "value": case.reference}]
    if case.accession:
        identifiers.append({"type": {"coding": [{"system": ID_TYPES, "code": "ACSN", "display": "Accession ID"}]},
                            "system": settings.accession_system, "value": case.accession})
    report: dict = {
        "resourceType": "DiagnosticReport", "id": f"leukodx-case-{case.id}", "identifier": identifiers,
        "status": status, "category": [{"coding": [HEMATOLOGY]}],
        "code": {"text": "Peripheral blood smear review (AI-assisted)"}, **subject,
        "performer": [{"display": settings.lab_name}], "specimen": [{"reference": "#specimen"}],
        "contained": [*([patient[0]] if patient else []), specimen, obs_call, obs_blast, obs_diff],
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


