"""One default place for the patients' data: `serve`, `user`, `token`, `backup` and `restore` all use
$LEUKODX_DB, else ${XDG_DATA_HOME:-~/.local/share}/leukodx/leukodx.db (images beside it), never the current
folder; `serve` says where at start, and an explicit --db or LEUKODX_DB still wins."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukodx.cli import app
from leukodx.web.settings import Settings, data_dir


@pytest.fixture()
def place(tmp_path, monkeypatch):
    """A fresh HOME, no XDG_DATA_HOME or LEUKODX_DB, and an empty current folder elsewhere."""
    home, cwd = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    cwd.mkdir()
    for name in ("XDG_DATA_HOME", "LEUKODX_DB", "LEUKODX_FILES_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home, cwd


def cli(*args: str, stdin: str | None = None) -> str:
    r = CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def users(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return sorted(name for (name,) in con.execute("select username from users"))


def tokens(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return sorted(name for (name,) in con.execute("select name from api_tokens"))


def serve_start(monkeypatch, *args: str) -> tuple[str, Settings]:
    """`leukodx serve` up to the point where uvicorn would start: its start-up lines and its settings."""
    import uvicorn

    seen: list = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.append(target.state.ctx.settings))
    monkeypatch.setenv("LEUKODX_ADMIN_PASSWORD", "admin-password")
    out = cli("serve", "--analyzer", "webtools:FakeAnalyzer", *args)
    assert len(seen) == 1
    return out, seen[0]


def test_every_command_uses_the_one_default_place(place, monkeypatch, tmp_path):
    home, cwd = place
    default = home / ".local" / "share" / "leukodx" / "leukodx.db"
    assert data_dir() == default.parent
    assert Settings().database_url == f"sqlite:///{default}"

    out = cli("user", "add", "alice", "--role", "admin", "--password-stdin", stdin="alice-password-1\n")
    assert f"added to the SQLite database {default}" in out
    assert default.is_file() and oct(default.parent.stat().st_mode & 0o777) == "0o700"  # private to its user
    out = cli("token", "create", "--name", "lab-pc-1")
    assert f"created in the SQLite database {default}" in out
    cli("user", "passwd", "alice", "--password-stdin", stdin="alice-password-2\n")
    out, settings = serve_start(monkeypatch)
    assert f"Patient data: the SQLite database {default}, images in {default.parent / 'leukodx-files'}" in out
    assert settings.database_url == f"sqlite:///{default}"
    assert users(default) == ["alice"] and tokens(default) == ["lab-pc-1"]  # alice is the admin: no other made

    archive = tmp_path / "backup.tar.gz"
    out = cli("backup", "--out", str(archive))
    assert "1 users" in out
    out = cli("restore", str(archive), "--force")
    assert f"added to {default.parent / 'leukodx-files'}" in out
    assert users(default) == ["alice"]
    assert list(cwd.iterdir()) == [], "nothing is written into the current folder"


def test_xdg_data_home_moves_the_default(place, monkeypatch, tmp_path):
    home, cwd = place
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    default = tmp_path / "xdg" / "leukodx" / "leukodx.db"
    cli("user", "add", "bea", "--password-stdin", stdin="bea-password-1\n")
    out, settings = serve_start(monkeypatch)
    assert settings.database_url == f"sqlite:///{default}" and f"the SQLite database {default}," in out
    assert users(default) == ["admin", "bea"]
    assert not (home / ".local").exists() and list(cwd.iterdir()) == []


def test_leukodx_db_and_db_still_win(place, monkeypatch, tmp_path):
    home, cwd = place
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    monkeypatch.setenv("LEUKODX_DB", str(env_db))
    cli("user", "add", "carl", "--password-stdin", stdin="carl-password-1\n")
    cli("token", "create", "--name", "env-token")
    out, settings = serve_start(monkeypatch)
    assert settings.database_url == f"sqlite:///{env_db}" and f"images in {tmp_path / 'env-files'}" in out
    cli("user", "add", "dina", "--db", str(flag_db), "--password-stdin", stdin="dina-password-1\n")
    cli("token", "create", "--name", "flag-token", "--db", str(flag_db))
    out, settings = serve_start(monkeypatch, "--db", str(flag_db))
    assert settings.database_url == f"sqlite:///{flag_db}"
    cli("backup", "--db", str(flag_db), "--out", str(tmp_path / "flag.tar.gz"))
    assert users(env_db) == ["admin", "carl"] and tokens(env_db) == ["env-token"]
    assert users(flag_db) == ["admin", "dina"] and tokens(flag_db) == ["flag-token"]
    assert not (home / ".local").exists(), "the default folder is not made when another database is given"
    assert list(cwd.iterdir()) == []


def test_postgresql_images_default_to_the_data_folder_too(place):
    home, cwd = place
    s = Settings(database_url="postgresql+psycopg://leukodx@db.example/leukodx")
    assert s.resolved_files_dir() == home / ".local" / "share" / "leukodx" / "leukodx-files"
    assert Settings(database_url="postgresql+psycopg://x@h/d", files_dir=cwd / "img").resolved_files_dir() == cwd / "img"


def test_the_demo_user_of_make_run_is_switched_off_when_the_clinic_serves_without_demo(place, monkeypatch):
    """`make run` (serve --demo) leaves demo/demo in the one default place; a later `serve` without --demo on the
    same database switches that account off (audited, said at start), and --demo switches it on again."""
    db = data_dir() / "leukodx.db"

    def active() -> bool:
        with sqlite3.connect(db) as con:
            return bool(con.execute("select active from users where username = 'demo'").fetchone()[0])

    out, _ = serve_start(monkeypatch, "--demo")
    assert "password demo" in out and active()
    out, _ = serve_start(monkeypatch)
    assert "demo" in out and "switched off" in out and not active()
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from audit_log where action = 'user.disable'").fetchone()[0] == 1
    out, _ = serve_start(monkeypatch)  # said once: nothing left to switch off
    assert "switched off" not in out and not active()
    serve_start(monkeypatch, "--demo")
    assert active()
