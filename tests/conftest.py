"""Shared fixtures: synthetic smears (core tests) and the real Taleqani data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "all-taleqani"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "Original").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (it lives in ../shared/data beside the checkout)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small public-layout synthetic data set (Original/ + Segmented/), 8 fields per class, 96 px."""
    from leukodx.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class=8, size=96, seed=1)


# --- the case store on SQLite and on PostgreSQL ---------------------------------------------------------------
# LEUKODX_TEST_POSTGRES_URL names a scratch PostgreSQL database (.ci/run starts a server and sets it); every
# test that takes `db_url` runs on a fresh SQLite file and on that database, emptied first.

POSTGRES_URL = os.environ.get("LEUKODX_TEST_POSTGRES_URL", "")
NO_POSTGRES = "PostgreSQL: set LEUKODX_TEST_POSTGRES_URL to a scratch database (.ci/run starts a real server)"


def empty_postgres(url: str) -> None:
    """Drop every table of the scratch database (and end the other sessions on it, e.g. earlier tests' pools)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
            for name in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
            conn.execute(text("DROP FUNCTION IF EXISTS audit_log_append_only() CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A database URL: a new SQLite file, then the emptied scratch PostgreSQL database (skipped without one)."""
    if request.param == "sqlite":
        from leukodx.web.settings import database_url_for

        return database_url_for(tmp_path / "web.db")
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    pytest.importorskip("psycopg")
    empty_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture()
def make_app(db_url):
    """make_app(folder, analyzer=None, **settings) -> (app, clinician headers, admin headers) on `db_url`."""
    apps = []

    def make(folder, analyzer=None, **kw):
        from webtools import make_test_app

        out = make_test_app(folder, analyzer, database_url=db_url, **kw)
        apps.append(out[0])
        return out

    yield make
    for app in apps:
        app.state.ctx.engine.dispose()
