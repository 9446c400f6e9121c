"""A bounded load test on loopback: 200 analyses at concurrency 8 against `leukodx serve` (fake analyzer).

The latency of the real models is measured by benchmarks/web_load.py (recorded in benchmarks/web_load.json).
"""

from __future__ import annotations

import asyncio

import pytest

from leukodx.web.auth import create_token
from leukodx.web.db import open_database
from leukodx.web.settings import database_url_for
from loadtools import run, run_load
from webtools import ServeProcess, field_bytes


def test_200_analyses_at_concurrency_8_without_errors(tmp_path):
    db = tmp_path / "load.db"
    _, sessions = open_database(database_url_for(db))
    with sessions() as s:
        _, token = create_token(s, "load", "clinician")
        s.commit()
    files = [(f"f{i}.jpg", field_bytes(("Benign", "Early", "Pre", "Pro")[i % 4], i, size=160)) for i in range(8)]
    with ServeProcess(db, fake=True) as url:
        result = asyncio.run(run_load(url, token, files, n=200, concurrency=8))
    assert result["status_counts"] == {"200": 200}, result["errors"]
    assert result["n_errors"] == 0
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    print(f"fake analyzer, 200 at c=8: p50 {lat['p50']} ms, p95 {lat['p95']} ms")


def assert_clean(r: dict) -> None:
    """No error but a 503 with Retry-After, no request over 30 s, every 201 stored once with its image."""
    a = r["audit"]
    assert r["load"]["n_errors"] == 0, r["load"]["errors"]
    assert r["load"]["latency_ms"]["max"] < 30_000
    assert r["accepted_201"] + r["load"]["n_busy_503_with_retry_after"] == r["load"]["n"]
    assert a["fields_in_database"] == a["distinct_images"] == a["audit_field_add_entries"] == r["accepted_201"]
    assert a["lost_fields"] == a["duplicated_fields"] == a["unexpected_fields"] == a["refused_but_stored"] == 0
    assert a["cases_whose_summary_miscounts"] == a["files_missing_or_damaged"] == 0
    assert r["ok"]


def test_32_concurrent_uploads_into_cases_on_sqlite_all_stored(tmp_path):
    """The collapse of issue 23: each request held a pooled database connection (from looking up its token)
    while it waited for its analysis, so beyond the pool's 15 connections the stores timed out after 30 s
    with 500s. 64 uploads at concurrency 32 into 2 cases (a fake analysis of 20 ms each)."""
    r = run("sqlite", n=64, concurrency=32, n_cases=2, delay_ms=20)
    assert_clean(r)
    assert r["accepted_201"] == 64  # the queue (2 workers + 32 waiting) holds them all


def test_32_concurrent_uploads_into_one_case_on_postgresql_with_2_processes_all_stored():
    from conftest import NO_POSTGRES, POSTGRES_URL

    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    r = run(POSTGRES_URL, workers=2, n=64, concurrency=32, n_cases=1, delay_ms=20)
    assert_clean(r)
    assert r["accepted_201"] == 64 and r["workers_alive_at_end"] == 2


def test_a_full_analysis_queue_answers_503_with_retry_after_and_stores_nothing_of_it():
    """One worker and one waiting place: of 16 concurrent uploads most are refused at once with 503 and
    Retry-After (never a timeout); those answered 201 are stored, the refused ones are not."""
    r = run("sqlite", n=32, concurrency=16, n_cases=2, delay_ms=50,
                               env={"LEUKODX_ANALYSIS_WORKERS": "1", "LEUKODX_ANALYSIS_QUEUE": "1"})
    assert_clean(r)
    assert r["load"]["n_busy_503_with_retry_after"] > 0 and r["accepted_201"] > 0
    assert all(int(v) >= 1 for v in r["load"]["retry_after_values"])


@pytest.mark.slow
def test_two_server_processes_on_postgresql_take_200_uploads_without_losing_one():
    """benchmarks/web_load_cases.py: `serve --workers 2`, 200 uploads into cases at concurrency 8 (fake analyzer),
    then the database and image folder are audited: 0 errors, no lost or duplicated field."""
    from conftest import NO_POSTGRES, POSTGRES_URL

    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    r = run(POSTGRES_URL, workers=2, n=200, concurrency=8)
    assert r["load"]["status_counts"] == {"201": 200}, r["load"]["errors"]
    assert len(r["worker_pids"]) == 2 and r["workers_alive_at_end"] == 2
    assert_clean(r)
