"""`leukodx backup` / `leukodx restore` on SQLite and on a real PostgreSQL server (see tests/conftest.py `db_url`):
a backup taken while a live server takes uploads restores every case, field and image byte for byte; damaged,
truncated, foreign or newer archives are refused and the current database is left as it was; a backup that
cannot be written leaves nothing under its name."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from leukodx.errors import LeukodxError
from leukodx.web import backup as bk
from leukodx.web.db import head_revision, make_engine
from webtools import LiveServer, field_bytes

TABLES = ("users", "api_tokens", "login_sessions", "cases", "fields", "audit_log")
DATA = Path(__file__).resolve().parent / "data"


def rows(db_url: str) -> dict[str, set[tuple]]:
    """Every row of every leukodx table, as tuples of text."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return {t: {tuple(str(v) for v in r) for r in conn.execute(text(f"SELECT * FROM {t}"))} for t in TABLES}
    finally:
        engine.dispose()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()} if folder.is_dir() else {}


def drop_database(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        path = db_url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
    else:
        from conftest import empty_postgres

        empty_postgres(db_url)


def upload(client: httpx.Client, headers: dict, ref: str, seeds: range) -> int:
    cid = client.post("/api/v1/cases", headers=headers, json={"reference": ref}).json()["id"]
    for s in seeds:
        r = client.post(f"/api/v1/cases/{cid}/images", headers=headers,
                        files=[("files", (f"f{s}.jpg", field_bytes(("Benign", "Pre", "Pro")[s % 3], s), "image/jpeg"))])
        assert r.status_code == 201, r.text
    return cid


@pytest.fixture()
def filled(db_url, tmp_path, make_app):
    """A store with 3 cases of 3 fields (images + overlays), a reviewed case and the app's tokens."""
    from fastapi.testclient import TestClient

    app, clin, admin = make_app(tmp_path)
    client = TestClient(app)
    for k in range(3):
        upload(client, clin, f"S-{k}", range(10 * k, 10 * k + 3))
    client.patch("/api/v1/cases/1/review", headers=clin, json={"case": {"decision": "override", "label": "Pro"}})
    return app, clin, db_url, app.state.ctx.store.root


def test_backup_delete_restore_is_byte_for_byte_while_the_server_runs(db_url, tmp_path, make_app):
    app, clin, _ = make_app(tmp_path)
    store = app.state.ctx.store.root
    out = tmp_path / "backups" / "nightly.tar.gz"
    out.parent.mkdir()
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for k in range(4):
            upload(client, clin, f"BEFORE-{k}", range(5 * k, 5 * k + 5))
        before_rows, before_files = rows(db_url), files_of(store)
        assert len(before_rows["fields"]) == 20 and len(before_files) == 40  # images + outline overlays
        stop, errors, during = threading.Event(), [], []

        def keep_uploading():  # new cases only: the rows above must come back exactly as they were
            with httpx.Client(base_url=url, timeout=60) as c:
                k = 0
                while not stop.is_set():
                    try:
                        during.append(upload(c, clin, f"DURING-{k}", range(100 + 3 * k, 103 + 3 * k)))
                    except Exception as exc:  # noqa: BLE001 - reported below
                        errors.append(repr(exc))
                    k += 1

        writer = threading.Thread(target=keep_uploading)
        writer.start()
        try:
            manifests = [bk.backup(db_url, store, out) for _ in range(3)]  # several, while uploads go on
        finally:
            stop.set()
            writer.join(timeout=60)
    assert not errors and during, errors
    manifest = manifests[-1]
    assert manifest["counts"]["fields"] >= 20 and manifest["database"]["schema_revision"] == head_revision()
    assert [p.name for p in out.parent.iterdir()] == ["nightly.tar.gz"]  # no partial files left beside it
    app.state.ctx.engine.dispose()

    drop_database(db_url)
    shutil.rmtree(store)
    result = bk.restore(out, db_url, store)
    assert result["restored"]["counts"] == manifest["counts"]
    after_rows, after_files = rows(db_url), files_of(store)
    for t in TABLES:
        assert before_rows[t] <= after_rows[t], t  # every row from before the backup, byte for byte
        assert len(after_rows[t]) == manifest["counts"][t]
    assert {n: after_files[n] for n in before_files} == before_files  # every image, byte for byte
    for name, data in after_files.items():
        assert hashlib.sha256(data).hexdigest() == name.split(".")[0]
    # the snapshot is consistent: every case's summary counts exactly the fields that came back with it
    engine = make_engine(db_url)
    with engine.connect() as conn:
        for cid, n_fields, real in conn.execute(text(
                "SELECT c.id, c.n_fields, (SELECT count(*) FROM fields f WHERE f.case_id = c.id) FROM cases c")):
            assert n_fields == real, cid
        referenced = {r[0] for r in conn.execute(text(
            "SELECT image_file FROM fields UNION SELECT overlay_file FROM fields WHERE overlay_file IS NOT NULL"))}
    engine.dispose()
    assert referenced <= set(after_files)


def test_restore_refuses_a_database_with_rows_unless_forced(filled, tmp_path):
    app, clin, db_url, store = filled
    out = tmp_path / "b.tar.gz"
    bk.backup(db_url, store, out)
    before = rows(db_url)
    with pytest.raises(LeukodxError, match=r"is not empty \(\d+ rows\).*--force"):
        bk.restore(out, db_url, store)
    # the clinic goes on working; --force brings the backup's state back
    from fastapi.testclient import TestClient

    upload(TestClient(app), clin, "AFTER-BACKUP", range(50, 51))
    app.state.ctx.engine.dispose()
    assert rows(db_url) != before
    bk.restore(out, db_url, store, force=True)
    assert rows(db_url) == before


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy an archive member by member; `change(name, data)` returns new bytes, or None to leave it out."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = change(m.name, tin.extractfile(m).read())
            if data is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


def _newer_schema(name, data):
    if name != "manifest.json":
        return data
    m = json.loads(data)
    m["database"]["schema_revision"] = "9999_from_the_future"
    return json.dumps(m).encode()


def _flip_one_image(name, data):
    if name.startswith("files/") and name.endswith(".jpg") and not getattr(_flip_one_image, "done", False):
        _flip_one_image.done = True
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    return data


@pytest.mark.parametrize("damage,words", [
    ("truncated", "damaged or truncated"),
    ("garbage", "damaged or truncated"),
    ("flipped-image", "does not match its sha256"),
    ("missing-image", "is missing"),
    ("newer-schema", "schema revision 9999_from_the_future, newer than this leukodx"),
    ("not-a-backup", "not a leukodx backup"),
])
def test_a_bad_archive_is_refused_and_the_database_is_untouched(filled, tmp_path, damage, words):
    app, _, db_url, store = filled
    app.state.ctx.engine.dispose()
    good = tmp_path / "good.tar.gz"
    bk.backup(db_url, store, good)
    bad = tmp_path / "bad.tar.gz"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(5000))
    elif damage == "flipped-image":
        _flip_one_image.done = False
        _rewrite(good, bad, _flip_one_image)
    elif damage == "missing-image":
        first = []
        _rewrite(good, bad, lambda n, d: None if n.startswith("files/") and not first and not first.append(n) else d)
    elif damage == "newer-schema":
        _rewrite(good, bad, _newer_schema)
    elif damage == "not-a-backup":
        with tarfile.open(bad, "w:gz") as t:
            info = tarfile.TarInfo("notes.txt")
            info.size = 5
            t.addfile(info, io.BytesIO(b"hello"))
    before_rows, before_files = rows(db_url), files_of(store)
    with pytest.raises(LeukodxError, match=words):
        bk.restore(bad, db_url, store, force=True)
    assert rows(db_url) == before_rows and files_of(store) == before_files
    assert not [p for p in tmp_path.rglob(".leukodx-restore-*")]  # no staging left behind
    r = subprocess.run([sys.executable, "-m", "leukodx", "restore", str(bad), "--db", db_url, "--files-dir", str(store),
                        "--force"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and words.split(",")[0] in r.stderr, r.stderr
    assert rows(db_url) == before_rows


def test_a_backup_that_cannot_be_written_leaves_nothing_under_its_name(filled, tmp_path):
    _, _, db_url, store = filled
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "b.tar.gz"

    # a disk that fills up: the kernel refuses writes past N bytes (RLIMIT_FSIZE, a real EFBIG), first while
    # the database is copied, then while the archive is written
    def limited(limit: int) -> str:
        return (f"import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
                f"from leukodx.cli import main; main(sys.argv[1:])")

    archive_size = bk.backup(db_url, store, tmp_path / "full.tar.gz")["database"]["bytes"]
    for limit in (16384, archive_size + 8192):
        r = subprocess.run([sys.executable, "-c", limited(limit), "backup", "--db", db_url, "--files-dir", str(store),
                            "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and f"Could not write the backup {out}: " in line, line
        assert "nothing was written under that name" in line and "Traceback" not in line
        assert list(folder.iterdir()) == []
    code = limited(archive_size + 8192)

    # an older good backup under that name stays as it was when a new one fails
    bk.backup(db_url, store, out)
    good = out.read_bytes()
    r = subprocess.run([sys.executable, "-c", code, "backup", "--db", db_url, "--files-dir", str(store),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and out.read_bytes() == good and [p.name for p in folder.iterdir()] == ["b.tar.gz"]

    for bad_out, words in ((tmp_path / "no-such-folder" / "b.tar.gz", "does not exist"), (folder, "is a folder")):
        with pytest.raises(LeukodxError, match=words):
            bk.backup(db_url, store, bad_out)


def test_a_damaged_or_missing_image_stops_the_backup_unless_allowed(filled, tmp_path):
    _, _, db_url, store = filled
    victim = sorted(p for p in store.iterdir() if p.suffix == ".jpg")[0]
    victim.write_bytes(victim.read_bytes()[:-10])  # bit rot
    out = tmp_path / "b.tar.gz"
    with pytest.raises(LeukodxError, match=f"damaged: {victim.name}: content does not match"):
        bk.backup(db_url, store, out)
    assert not out.exists()
    m = bk.backup(db_url, store, out, allow_damaged=True)
    assert [d["name"] for d in m["damaged"]] == [victim.name]
    assert victim.name not in {i["name"] for i in m["files"]["items"]}
    victim.unlink()
    with pytest.raises(LeukodxError, match=r"1 file\(s\) the database refers to are not in .*e\.g\. " + victim.name):
        bk.backup(db_url, store, out)


def test_a_database_from_before_alembic_is_backed_up_and_restored_at_the_newest_schema(tmp_path):
    import sqlite3

    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.executescript((DATA / "leukodx-v1.sqlite.sql").read_text())
    con.close()
    out = tmp_path / "old.tar.gz"
    m = bk.backup(f"sqlite:///{old}", tmp_path / "old-files", out, allow_damaged=True)  # its one image was never stored
    assert m["database"]["schema_revision"] == "0001" and m["counts"]["cases"] == 1
    new = tmp_path / "new.db"
    bk.restore(out, f"sqlite:///{new}", tmp_path / "new-files")
    engine = make_engine(f"sqlite:///{new}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
        assert conn.execute(text("SELECT reference FROM cases")).scalar() == "OLD-1"
    engine.dispose()


def test_check_reads_the_whole_archive_and_the_cli_prints_one_line(filled, tmp_path):
    _, _, db_url, store = filled
    out = tmp_path / "b.tar.gz"
    r = subprocess.run([sys.executable, "-m", "leukodx", "backup", "--db", db_url, "--files-dir", str(store),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Backup written" in r.stdout and "3 cases, 9 fields" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "leukodx", "restore", str(out), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "every sha256 matches" in r.stdout
    with tarfile.open(out) as t:
        names = t.getnames()
        manifest = json.loads(t.extractfile("manifest.json").read())
    assert names[0] == "manifest.json" and len(names) == 2 + manifest["files"]["count"] == 2 + 18
    assert manifest["leukodx_version"] and manifest["created"] and manifest["counts"]["fields"] == 9
    r = subprocess.run([sys.executable, "-m", "leukodx", "restore", str(tmp_path / "nope.tar.gz"), "--db",
                        str(tmp_path / "x.db")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"error: There is no backup file {tmp_path / 'nope.tar.gz'}. Check the path."
