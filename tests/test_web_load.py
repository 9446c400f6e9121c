"""A bounded load test on loopback: 200 analyses at concurrency 8 against `leukodx serve` (fake analyzer).

The latency of the real models is measured by benchmarks/web_load.py (recorded in benchmarks/web_load.json).
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

from leukodx.web.auth import create_token
from leukodx.web.db import open_database
from leukodx.web.settings import database_url_for
from webtools import ServeProcess, field_bytes

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "web_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("web_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_200_analyses_at_concurrency_8_without_errors(tmp_path):
    bench = load_bench()
    db = tmp_path / "load.db"
    _, sessions = open_database(database_url_for(db))
    with sessions() as s:
        _, token = create_token(s, "load", "clinician")
        s.commit()
    files = [(f"f{i}.jpg", field_bytes(("Benign", "Early", "Pre", "Pro")[i % 4], i, size=160)) for i in range(8)]
    with ServeProcess(db, fake=True) as url:
        result = asyncio.run(bench.run_load(url, token, files, n=200, concurrency=8))
    assert result["status_counts"] == {"200": 200}, result["errors"]
    assert result["n_errors"] == 0
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    print(f"fake analyzer, 200 at c=8: p50 {lat['p50']} ms, p95 {lat['p95']} ms")
