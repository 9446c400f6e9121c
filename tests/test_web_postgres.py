"""The case store on SQLite and on a real PostgreSQL server: schema migrations (Alembic), taking over a database
of leukodx before Alembic, refusing a newer one, and the API flow.

The PostgreSQL half runs when LEUKODX_TEST_POSTGRES_URL names a scratch database (its tables are dropped
first); `.ci/run` starts a server and sets it. Without it those tests skip with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

from leukodx.errors import LeukodxError
from leukodx.web.db import Base, Case, Field, User, head_revision, make_engine, migrate, open_database

DATA = Path(__file__).resolve().parent / "data"


def revision_of(engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()


def load_v1_database(url: str) -> None:
    """The database that leukodx made before Alembic (schema version 1), from its dump in tests/data."""
    if url.startswith("sqlite"):
        import sqlite3

        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        con.executescript((DATA / "leukodx-v1.sqlite.sql").read_text())
        con.close()
        return
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql((DATA / "leukodx-v1.postgres.sql").read_text())
    engine.dispose()


def test_a_new_database_gets_exactly_the_models_schema(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(db_url)
    assert migrate(engine) == ["0001", "0002", "0003", "0004"] and head_revision() == "0004"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []  # the migrations build what the models describe, nothing more or less
        assert conn.execute(text("SELECT version FROM schema_migrations")).scalars().all() == [1]
        conn.execute(text("INSERT INTO audit_log (at, actor, action, target, detail) "
                          "VALUES (CURRENT_TIMESTAMP, 'x', 'y', '', '{}')"))
        with pytest.raises(Exception, match="append-only"):
            conn.execute(text("DELETE FROM audit_log"))
    assert migrate(engine) == []  # nothing left to apply
    assert revision_of(engine) == [head_revision()]
    engine.dispose()


def test_a_database_from_before_alembic_upgrades_with_its_rows(db_url):
    from leukodx.web.auth import verify_password

    load_v1_database(db_url)
    engine, sessions = open_database(db_url)
    assert revision_of(engine) == [head_revision()]
    with sessions() as db:
        user = db.scalar(select(User).where(User.username == "olduser"))
        assert user is not None and verify_password("old-password-1", user.password_hash)
        case = db.scalar(select(Case).where(Case.reference == "OLD-1"))
        assert case.note == "made by leukodx before Alembic" and [f.display_name for f in case.fields] == ["f.jpg"]
        assert case.fields[0].probabilities == {"Pre": 1.0}
        assert case.fields[0].cell_model is None  # revision 0004: analysed before versions were kept
        # revision 0003: no accession or patient yet, the default target, never verified
        assert (case.accession, case.patient_id, case.differential_target) == ("", "", 100)
        assert case.differential_verified is False and case.differential_verified_by is None
        from leukodx.web.cases.serialise import case_dict

        d = case_dict(case)
        assert d["differential_source"] == "ai" and d["amendments"] == [] and d["accession"] == ""
        # the upgraded database takes new rows (sequences / autoincrement carried over)
        db.add(Case(reference="NEW-1", created_by="olduser"))
        db.commit()
        assert db.scalar(select(func.count(Case.id))) == 2
    with engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("UPDATE audit_log SET actor = 'someone else'"))
    engine.dispose()


def test_a_database_from_a_newer_leukodx_is_refused_and_left_alone(db_url):
    engine, sessions = open_database(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    with pytest.raises(LeukodxError, match=r"schema revision 9999_future, newer than this leukodx.*Upgrade"):
        open_database(db_url)
    check = make_engine(db_url)
    assert revision_of(check) == ["9999_future"]
    check.dispose()


def test_a_newer_pre_alembic_version_is_refused(db_url):
    load_v1_database(db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_migrations (version, name, applied_at) "
                          "VALUES (2, 'from the future', CURRENT_TIMESTAMP)"))
    with pytest.raises(LeukodxError, match="schema version 2, newer"):
        migrate(engine)
    with engine.connect() as conn:
        assert "alembic_version" not in [r[0] for r in conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type='table'" if db_url.startswith("sqlite") else
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))]
    engine.dispose()


def test_processes_starting_together_migrate_once(db_url, tmp_path):
    """Several leukodx processes opening one new database at once (serve workers, a CLI command): one
    migrates, the others wait for it and find nothing to do."""
    code = ("import sys; from leukodx.web.db import make_engine, migrate; "
            "print(migrate(make_engine(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-500:] for o in outs]
    assert sorted(o[0].strip() for o in outs) == ["['0001', '0002', '0003', '0004']", "[]", "[]"]


def test_the_api_flow_works_the_same(db_url, tmp_path, make_app):
    app, _, h = make_app(tmp_path)
    client = TestClient(app)
    cid = client.post("/api/v1/cases", headers=h, json={"reference": "PG-1"}).json()["id"]
    from webtools import field_bytes

    files = [("files", (f"f{i}.jpg", field_bytes("Pre", i), "image/jpeg")) for i in range(2)]
    up = client.post(f"/api/v1/cases/{cid}/images", headers=h, files=files)
    assert up.status_code == 201, up.text
    fid = up.json()["added"][0]["id"]
    r = client.patch(f"/api/v1/cases/{cid}/review", headers=h, json={
        "case": {"decision": "override", "label": "Pro", "note": "pg"},
        "fields": [{"field_id": fid, "decision": "confirm"}]})
    assert r.status_code == 200 and r.json()["review"]["label"] == "Pro"
    assert client.get("/api/v1/cases", headers=h, params={"status": "reviewed", "flagged": "false"}).status_code == 200
    csv_text = client.get("/api/v1/cases", headers=h, params={"format": "csv", "q": "pg"}).text
    assert "PG-1" in csv_text
    with app.state.ctx.engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("DELETE FROM audit_log"))
    assert client.delete(f"/api/v1/cases/{cid}", headers=h).status_code == 204
    with app.state.ctx.sessions() as db:
        assert db.scalar(select(func.count(Field.id))) == 0


@pytest.mark.parametrize("url,words", [
    ("postgresql://clinic:s3cret-pw@127.0.0.1:{port}/leukodx", ["127.0.0.1:{port}", "refused"]),
    ("postgresql+psycopg://clinic:s3cret-pw@no-such-host.invalid/leukodx", ["no-such-host.invalid", "resolve"]),
])
def test_a_postgresql_url_that_cannot_connect_is_one_line_with_host_and_cause(url, words):
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = url.format(port=port)
    r = subprocess.run([sys.executable, "-m", "leukodx", "token", "create", "--name", "x", "--db", url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Cannot connect to the PostgreSQL database leukodx"), lines
    for w in words:
        assert w.format(port=port) in lines[0]
    assert "s3cret-pw" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_serve_refuses_several_workers_on_sqlite_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "leukodx", "serve", "--workers", "2", "--db", str(tmp_path / "x.db")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--workers 2 needs a PostgreSQL database" in r.stderr and not (tmp_path / "x.db").exists()
