"""Issue 29's admin page "Adapt to this lab" in a real browser (Chromium via Playwright): the labelled cells of
signed-off cases per class, a refused adaptation that writes nothing, the adaptation in the background with its
commissioning report, activating the adapted cell model and rolling back with a reason (both audited), new analyses
recording the version in use while older fields keep theirs, and the choice surviving a restart."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from sqlalchemy import select

from leukodx.inference.cell_classifier import CellClassifier
from leukodx.web.adapt import ACTIVATE, ROLLBACK, models_dir
from leukodx.web.app import create_app
from leukodx.web.db import AuditEntry
from test_web_adapt import labelled_case
from webtools import FakeAnalyzer, LiveServer, browser_marks, field_bytes, launch_chromium, make_test_app

pytestmark = browser_marks()


@pytest.fixture()
def server(tmp_path):
    app, clin, _ = make_test_app(tmp_path, FakeAnalyzer(), users={"alice": ("alice-password", "clinician"),
                                                                  "root": ("root-password", "admin")})
    with LiveServer(app) as url, httpx.Client(base_url=url, headers=clin, timeout=60) as api:
        yield app, url, api


def upload(api: httpx.Client, ref: str) -> tuple[int, dict]:
    """(case id, its field) of a new case of one field."""
    cid = api.post("/api/v1/cases", json={"reference": ref}).json()["id"]
    up = api.post(f"/api/v1/cases/{cid}/images", files=[("files", (f"{ref}.jpg", field_bytes("Pre", 7), "image/jpeg"))])
    assert up.status_code == 201, up.text
    return cid, up.json()["added"][0]


def test_an_admin_adapts_activates_and_rolls_back_the_cell_model(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    app, url, api = server
    bundled = CellClassifier.load().version
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))

        def log_in(user: str) -> None:
            page.context.clear_cookies()
            page.goto(url + "/login")
            page.get_by_label("User name").fill(user)
            page.get_by_label("Password").fill(f"{user}-password")
            page.get_by_role("button", name="Log in").click()

        log_in("alice")  # not an admin
        assert page.goto(url + "/admin/adapt").status == 403
        expect(page.get_by_text("Only an admin")).to_be_visible()

        log_in("root")
        page.get_by_role("link", name="Adapt to this lab").click()
        expect(page.locator("#labelled-cells")).to_contain_text("No cell classed by a reviewer")
        # too few: how a cell becomes a labelled cell is open, with the way to the cases
        expect(page.locator("#how-to-label")).to_contain_text("a cell left under the AI's class is not a labelled cell")
        expect(page.locator("#how-to-label a[href='/cases']")).to_be_visible()
        expect(page.locator("#rollback")).to_have_count(0)  # the bundled model is in use: nothing to roll back to
        page.get_by_role("button", name="Run the adaptation").click()  # too few: refused, nothing written
        expect(page.locator("#adapt-status")).to_contain_text("need 10 more blast(s)", timeout=60_000)
        expect(page.locator("#adapt-status")).to_contain_text("See “How cells become labelled cells” above.")
        assert "--" not in page.locator("#adapt-status").inner_text()  # no command-line hint on a web page
        assert not any(models_dir(app.state.ctx.settings).glob("2*"))

        old_case, _ = upload(api, "OLD-1")  # analysed before any change: no version recorded by the fake analyser
        counts = labelled_case(api, "S-1", 0)
        page.reload()  # every class in one case: said per class
        expect(page.locator("#labelled-cells .one-case")).to_have_count(len(counts))
        counts += labelled_case(api, "S-2", 100) + labelled_case(api, "S-3", 200)
        page.reload()
        expect(page.locator("#labelled-cells .one-case")).to_have_count(0)
        blast_row = page.locator("#labelled-cells tbody tr", has_text="Blast").locator("td")
        expect(blast_row).to_have_text(["Blast", str(counts["blast"]), "3"])  # cells, and the cases they are in
        expect(page.locator("#labelled-cells")).to_contain_text(f"{counts['blast']} blast(s)")
        expect(page.locator("#labelled-cells")).to_contain_text("Lymphocyte / hematogone")  # the gallery's words
        page.get_by_role("button", name="Run the adaptation").click()
        expect(page.locator("#recommendation")).to_contain_text("model", timeout=120_000)
        expect(page.locator("#adapted-figures")).to_contain_text("sensitivity")
        (name, rep), = [(d.name, json.loads((d / "commissioning.json").read_text()))
                        for d in models_dir(app.state.ctx.settings).glob("2*")]
        if rep["use_adapted"]:
            expect(page.locator("#not-recommended")).to_have_count(0)
        else:  # what to do when the report says no, and activating asks first
            expect(page.locator("#not-recommended")).to_contain_text("label more cells, of more cases")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than its screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.set_viewport_size({"width": 1366, "height": 768})
        page.get_by_role("link", name="The full commissioning report").click()
        expect(page.locator("h1")).to_have_text("Cell model commissioning")
        # its own inline style applies (a policy of its own), with no Content-Security-Policy error
        assert "sans-serif" in page.evaluate("getComputedStyle(document.body).fontFamily")
        page.go_back()
        expect(page.locator("#adapt-log")).to_contain_text(f"report of {name}")

        page.locator("#activate-reason").fill("   ")  # a blank reason: refused, nothing changes
        page.get_by_role("button", name="Activate this adapted cell model").click()
        expect(page.locator("#adapt-error")).to_contain_text("Give a reason")
        assert page.url == url + "/admin/adapt"  # a reload shows the page, and does not send the form again
        page.locator("#activate-reason").fill("Commissioning of 2027-03: beats the bundled model")
        page.get_by_role("button", name="Activate this adapted cell model").click()
        expect(page.locator(".notice")).to_contain_text("The adapted cell model is active")
        assert sum("advises keeping" in d for d in dialogs) == (0 if rep["use_adapted"] else 2)  # both tries asked
        adapted = page.locator("#active-version").inner_text()
        assert adapted.startswith("adapted-") and adapted != bundled

        new_case, new = upload(api, "NEW-1")
        assert new["cell_model"] == adapted
        assert api.get(f"/api/v1/cases/{old_case}").json()["fields"][0]["cell_model"] is None  # not re-analysed
        page.goto(url + f"/cases/{new_case}")
        page.locator("#tech-details summary").click()
        expect(page.locator("#cell-model")).to_contain_text(adapted)
        expect(page.locator("#case-cell-model")).to_contain_text(f"adapted to this lab's own labelled cells ({adapted})")
        page.set_viewport_size({"width": 390, "height": 844})  # the case page too (its differential scrolls)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.set_viewport_size({"width": 1366, "height": 768})
        page.goto(url + f"/cases/{new_case}/report")
        expect(page.locator("#report-cell-model")).to_contain_text(f"{adapted} (adapted-…: adapted to this lab")
        page.goto(url + f"/cases/{old_case}")
        expect(page.locator("#case-cell-model")).to_have_count(0)

        # a restart (another app on the same database) uses the active choice
        again = create_app(app.state.ctx.settings, analyzer=FakeAnalyzer())
        again.state.ctx.service.sync_cells()
        assert again.state.ctx.service.analyzer.cell_classifier.version == adapted
        again.state.ctx.engine.dispose()

        page.goto(url + "/admin/adapt")
        page.get_by_role("button", name="Run the adaptation").click()  # a second run: the page follows it ...
        page.locator("#rollback-reason").fill("Trial ended")
        if page.locator("#adapt-status[data-reload]").count():  # ... but never reloads away what is being typed
            assert page.locator("head meta[http-equiv=refresh]").count() == 0
            page.wait_for_timeout(2500)
            expect(page.locator("#rollback-reason")).to_have_value("Trial ended")
        page.get_by_role("button", name="Roll back to the bundled cell model").click()
        expect(page.locator(".notice")).to_contain_text("Rolled back")
        expect(page.locator("#active-version")).to_have_text(bundled)
        expect(page.locator("#adapt-log")).to_contain_text("Trial ended")
        expect(page.locator("#adapt-status")).to_contain_text("Done", timeout=120_000)  # it went on, and finished
        assert upload(api, "NEW-2")[1]["cell_model"] == bundled
        browser.close()
    assert errors == []
    with app.state.ctx.sessions() as db:
        log = db.scalars(select(AuditEntry).where(AuditEntry.action.in_((ACTIVATE, ROLLBACK)))
                         .order_by(AuditEntry.id)).all()
    assert [(e.actor, e.action) for e in log] == [("root", ACTIVATE), ("root", ROLLBACK)]
    assert [json.loads(e.detail)["reason"] for e in log] == ["Commissioning of 2027-03: beats the bundled model",
                                                              "Trial ended"]
    assert re.match(r"^adapted-[0-9a-f]{12}$", json.loads(log[0].detail)["version"])
