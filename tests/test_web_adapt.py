"""Issue 29 from the web app, over real servers (uvicorn on 127.0.0.1): the cells reviewers classed in signed-off
cases are the lab's labelled cells (`leukodx adapt --from-db`), `serve --cells` starts with an adapted cell model,
and each field records the cell model's version, which the case API, the printed report and FHIR name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import httpx
import numpy as np

from leukodx.data.images import read_field
from leukodx.inference.cell_classifier import CellClassifier, crop_cells
from leukodx.web.adapt import labelled_crops
from leukodx.web.auth import create_token
from leukodx.web.db import open_database
from leukodx.web.settings import database_url_for
from webtools import FakeAnalyzer, LiveServer, ServeProcess, field_bytes, login, make_test_app

KINDS = ("blast", "lymphocyte", "blast", "neutrophil")


def labelled_case(api: httpx.Client, ref: str, seed: int, n_fields: int = 5, sign: bool = True) -> Counter:
    """A case of synthetic fields whose every cell a reviewer classes (blast, lymphocyte, blast, neutrophil, ...),
    signed off or not; returns its reviewer's classes."""
    cid = api.post("/api/v1/cases", json={"reference": ref}).json()["id"]
    files = [("files", (f"{ref}-{i}.jpg", field_bytes("Pro", seed + i, size=224), "image/jpeg"))
             for i in range(n_fields)]
    up = api.post(f"/api/v1/cases/{cid}/images", files=files)
    assert up.status_code == 201, up.text
    cells = [{"field_id": f["id"], "id": c["id"]} for f in up.json()["added"] for c in f["cells"]]
    todo = [{**c, "label": KINDS[i % len(KINDS)]} for i, c in enumerate(cells)]
    assert api.patch(f"/api/v1/cases/{cid}/cells", json={"cells": todo}).status_code == 200
    if sign:
        assert api.patch(f"/api/v1/cases/{cid}/review", json={"case": {"decision": "confirm"}}).status_code == 200
    return Counter(c["label"] for c in todo)


def adapt_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukodx", "adapt", *args], capture_output=True, text=True,
                          timeout=600)


def test_adapt_from_db_learns_the_reviewers_cells_of_signed_off_cases(tmp_path):
    app, clin, _ = make_test_app(tmp_path, FakeAnalyzer(cell_labels=True))  # the AI suggests classes too
    db = str(tmp_path / "web.db")
    with LiveServer(app) as url, httpx.Client(base_url=url, headers=clin, timeout=60) as api:
        first = labelled_case(api, "S-1", 0, n_fields=3)
        labelled_case(api, "S-unsigned", 500, n_fields=8, sign=False)  # not signed off: not the lab's labels
        # too few: one line saying how many more, nothing written
        few = adapt_cli("--from-db", db, "--out", str(tmp_path / "A"))
        assert few.returncode != 0 and "Traceback" not in few.stderr
        need = 10 - first["blast"]
        assert f"need {need} more blast(s)" in few.stderr.replace("\n", " ")
        assert not (tmp_path / "A").exists() and not (tmp_path / ".A.tmp").exists()
        missing = adapt_cli("--from-db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "A"))
        assert missing.returncode != 0 and "There is no database" in missing.stderr
        assert not (tmp_path / "nope.db").exists() and not (tmp_path / "A").exists()

        second, third = labelled_case(api, "S-2", 100), labelled_case(api, "S-3", 200)
        done = adapt_cli("--from-db", db, "--out", str(tmp_path / "A"))
        assert done.returncode == 0, done.stderr
        from test_adapt_cells import _lab

        lab = _lab(tmp_path / "lab", {"blast": 4, "non_blast": 3}, cases=2)  # a folder of cells beside them
        both = adapt_cli("--cells", str(lab), "--from-db", db, "--out", str(tmp_path / "B"))
        assert both.returncode == 0, both.stderr
    rep = json.loads((tmp_path / "A" / "commissioning.json").read_text())
    assert rep["per_class"] == dict(first + second + third)  # the reviewer's classes, never the AI's
    assert rep["n_cases"] == 3 and rep["grouped_by_case"] and "signed-off cases" in rep["cells"]
    assert CellClassifier.load(tmp_path / "A" / "cells").version.startswith("adapted-")
    rep_b = json.loads((tmp_path / "B" / "commissioning.json").read_text())
    assert rep_b["per_class"] == {**rep["per_class"], "blast": rep["per_class"]["blast"] + 4, "non_blast": 3}
    assert rep_b["n_cases"] == 5 and rep_b["data_sha256"] != rep["data_sha256"]

    # each crop is cut from the stored field at the cell's centroid, at the field's scale, as the analysis cuts it
    _, sessions = open_database(database_url_for(db))
    clf = CellClassifier.load()
    cut = labelled_crops(sessions, app.state.ctx.store.root)(clf)
    with sessions() as s:
        from leukodx.web.adapt import class_counts, reviewed_cells

        f, c, k = reviewed_cells(s)[0]
        assert class_counts(s, tuple(rep["per_class"])) == {k: (n, 3) for k, n in rep["per_class"].items()}
        image = read_field(app.state.ctx.store.root / f.image_file)
        key = f"{f.sha256}:{c['id']}"
        d = f.result.get("rbc_diameter_px") if f.result.get("scale_factor") is not None else None
    crop, label, case, _ = next(x for x in cut if x[3] == key)
    assert (label, case) == (k, f"web case {f.case_id}")  # never one group with a folder case of that name
    assert np.array_equal(crop, crop_cells(image, [c["centroid"]], d, clf.size[0], clf.width_rbc)[0])


def test_serve_cells_starts_with_the_adapted_model_and_each_field_names_its_version(tmp_path):
    from leukodx.deploy.commission import commission_cells
    from test_adapt_cells import _lab

    commission_cells(_lab(tmp_path / "lab", {"blast": 10, "lymphocyte": 10}, cases=3), tmp_path / "A")
    version = CellClassifier.load(tmp_path / "A" / "cells").version
    db = tmp_path / "real.db"
    _, sessions = open_database(database_url_for(db))
    with sessions() as s:
        _, token = create_token(s, "lab-pc", "clinician")
        s.commit()
    with ServeProcess(db, fake=False, extra=["--cells", str(tmp_path / "A" / "cells")]) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as api:
        assert api.get("/readyz").json()["models"]["cell_model"] == version
        cid = api.post("/api/v1/cases", json={"reference": "REAL-29"}).json()["id"]
        up = api.post(f"/api/v1/cases/{cid}/images",
                      files=[("files", ("f.jpg", field_bytes("Pro", 3, size=224), "image/jpeg"))])
        assert up.status_code == 201, up.text
        assert up.json()["added"][0]["cell_model"] == version
        assert api.get(f"/api/v1/cases/{cid}").json()["fields"][0]["cell_model"] == version
        notes = [n["text"] for r in api.get(f"/api/v1/cases/{cid}/fhir").json()["contained"] for n in r.get("note", [])]
        assert f"Cell model version: {version}." in notes
        with httpx.Client(base_url=url, timeout=60) as page:
            assert login(page, "admin", "admin-password").status_code == 303
            assert version in page.get(f"/cases/{cid}/report").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get("/admin/adapt").text).group(1)
            r = page.post("/admin/adapt/choose", data={"csrf_token": csrf, "reason": "back to the bundled one"})
            assert r.status_code == 303
            assert api.get("/readyz").json()["models"]["cell_model"] == CellClassifier.load().version
    # the admin's choice outlives a restart, --cells or not
    with ServeProcess(db, fake=False, extra=["--cells", str(tmp_path / "A" / "cells")]) as url:
        assert httpx.get(url + "/readyz").json()["models"]["cell_model"] == CellClassifier.load().version
    bad = subprocess.run([sys.executable, "-m", "leukodx", "serve", "--db", str(db), "--cells", str(tmp_path / "lab")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "is not a model directory" in bad.stderr
