"""Backup and restore of a leukodx case store: the database and the stored images, in one archive.

The archive's layout, and how a backup stays consistent while the server runs: docs/design.md, "web/backup".
It is written under a temporary name beside ARCHIVE, read back and checked, and only then renamed. `restore()`
checks the whole archive in a staging folder before it touches the target: a failed check changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from contextlib import closing, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL

from leukodx import __version__
from leukodx.errors import LeukodxError
from leukodx.io import file_sha256
from leukodx.web import db as database
from leukodx.web.storage import NAME_RE, fsync_dir

FORMAT = "leukodx-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database.sqlite3"
PG_MEMBER = "database.sql"
FILE_COLUMNS = ("image_file", "overlay_file", "heatmap_file")
COUNTED = ("users", "api_tokens", "login_sessions", "cases", "fields", "audit_log")
LEUKODX_TABLES = tuple(database.Base.metadata.tables) + ("alembic_version",)


class BackupError(LeukodxError):
    pass


def _upper(text_: str) -> str:
    return text_[:1].upper() + text_[1:]


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("An in-memory SQLite database cannot be backed up or restored.", "Give a database file.")
    return Path(url.database)


# --- reading a consistent snapshot -------------------------------------------------------------------------

def _snapshot_facts(conn) -> dict:
    """Row counts and referenced file names, read through `conn` (a SQLAlchemy connection or a sqlite3
    connection) inside the snapshot."""
    run = conn.execute if isinstance(conn, sqlite3.Connection) else conn.exec_driver_sql
    counts = {t: run(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in COUNTED}
    names: set[str] = set()
    for col in FILE_COLUMNS:
        names |= {r[0] for r in run(f"SELECT DISTINCT {col} FROM fields WHERE {col} IS NOT NULL")}
    return {"counts": counts, "files": sorted(names)}


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "alembic_version" in tables:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    if "schema_migrations" in tables:  # not opened by a leukodx with Alembic yet: version 1 is 0001
        legacy = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        return "0001" if legacy == 1 else f"legacy-{legacy}" if legacy else None
    return None


def _check_revision(rev: str | None, what: str) -> str:
    if rev is None:
        raise BackupError(f"{what} holds no leukodx database (no schema).",
                          "Check --db; `leukodx serve --db ...` creates one.")
    if not database.is_known_revision(rev):
        raise database.newer_schema_error(what, rev)
    return rev


def _snapshot_sqlite(url: URL, staging: Path) -> tuple[Path, dict]:
    src_path = _sqlite_path(url)
    if not src_path.is_file():
        raise BackupError(f"There is no database file {src_path}.", "Check --db (the file `leukodx serve` uses).")
    target = staging / SQLITE_MEMBER
    try:
        src = sqlite3.connect(src_path, timeout=30)  # only read from: the backup API takes a read snapshot
    except sqlite3.Error as exc:
        raise BackupError(f"Cannot open the database {src_path}: {exc}.", "Check the path and its permissions.") from None
    with closing(sqlite3.connect(target)) as dst:
        try:
            src.backup(dst)  # all pages in one step: one consistent snapshot, writers are not blocked (WAL)
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and "READ" not in name):
                raise OSError(0, f"the disk refused the write ({name}: {exc})") from None  # beside --out
            raise BackupError(f"Could not copy the database {src_path}: {exc}.", "Check that it is a leukodx "
                              "database and that the disk of --out has space.") from None
        finally:
            src.close()
        dst.execute("PRAGMA journal_mode=DELETE")  # a standalone file, no -wal beside it
        check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"The database {src_path} is damaged ({check}).",
                              "Do not overwrite older backups; restore the newest good one.")
        facts = {"schema_revision": _check_revision(_sqlite_revision(dst), f"The database {src_path}"),
                 **_snapshot_facts(dst)}
    return target, facts


def libpq_args(url: URL) -> tuple[list[str], dict]:
    """`--dbname=<conninfo>` for pg_dump / psql, and the environment with the password (never on the
    command line, where other users could read it)."""
    def quote(v) -> str:
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = {"dbname": url.database, "user": url.username, "host": url.host, "port": url.port}
    parts |= {k: ",".join(v) if isinstance(v, tuple) else v for k, v in url.query.items()}
    conninfo = " ".join(f"{k}={quote(v)}" for k, v in parts.items() if v not in (None, ""))
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return [f"--dbname={conninfo}"], env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed; leukodx needs it for PostgreSQL backups.",
                          "Install PostgreSQL's client tools (Debian: apt install postgresql-client).")
    return path


def _last_line(text_: str) -> str:
    lines = [ln.strip() for ln in text_.splitlines() if ln.strip() and not ln.startswith("HINT")]
    return lines[-1] if lines else "no message"


def _run_to_file(cmd: list[str], env: dict, target: Path) -> None:
    """Run pg_dump with its output written here (so that a full disk is an OSError of ours, with its reason)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # both are pipes (PIPE above)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(stderr.read()), daemon=True)
    reader.start()
    try:
        with open(target, "wb") as out:
            while chunk := stdout.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        stdout.close()
    rc = proc.wait()
    reader.join(timeout=10)
    if rc != 0:
        message = _last_line(b"".join(err).decode(errors="replace"))
        raise BackupError(f"pg_dump failed ({'exit status ' + str(rc) if rc > 0 else 'signal ' + str(-rc)}): "
                          f"{message}.", "pg_dump must be the server's major version or newer.")


def _snapshot_postgres(url: URL, staging: Path) -> tuple[Path, dict]:
    pg_dump = _tool("pg_dump")
    target = staging / PG_MEMBER
    engine = database.make_engine(url)
    try:
        with database._connect_errors(engine), engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
            rev = database.current_revision(conn)
            facts = {"schema_revision": _check_revision(rev, _upper(database.describe_url(url)))}
            facts.update(_snapshot_facts(conn))
            args, env = libpq_args(url)
            _run_to_file([pg_dump, *args, f"--snapshot={snapshot}", "--no-owner", "--no-privileges",
                          "--format=plain"], env, target)
            conn.rollback()
    finally:
        engine.dispose()
    return target, facts


# --- backup ------------------------------------------------------------------------------------------------

def _read_files(files_dir: Path, names: list[str]) -> tuple[dict[str, bytes], list[str], list[dict]]:
    """(name -> bytes for the good files, names missing, damaged [{name, problem}])."""
    good, missing, damaged = {}, [], []
    for name in names:
        if not NAME_RE.match(name):
            damaged.append({"name": name, "problem": "not a content-hash file name"})
            continue
        try:
            data = (files_dir / name).read_bytes()
        except FileNotFoundError:
            missing.append(name)
            continue
        if hashlib.sha256(data).hexdigest() != name.split(".")[0]:
            damaged.append({"name": name, "problem": "content does not match its sha256 name (damaged on disk)"})
            continue
        good[name] = data
    return good, missing, damaged


def _add(tar: tarfile.TarFile, name: str, data: bytes | Path) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    info.mode = 0o600
    info.size = data.stat().st_size if isinstance(data, Path) else len(data)
    with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as fh:
        tar.addfile(info, fh)


def backup(db_url: str, files_dir: Path, out: Path, allow_damaged: bool = False) -> dict:
    """Write a consistent backup of the database `db_url` and its images in `files_dir` to `out`.
    Returns the manifest. Nothing is left under `out` unless the whole archive was written and checked."""
    url = database.normalize_url(db_url)
    out = Path(out).expanduser().absolute()
    files_dir = Path(files_dir)
    if out.is_dir():
        raise BackupError(f"--out {out} is a folder.", "Give a file name, e.g. leukodx-2026-01-31.tar.gz.")
    if not out.parent.is_dir():
        raise BackupError(f"The folder {out.parent} for the backup does not exist.", "Create it, or choose another --out.")
    try:
        staging = Path(tempfile.mkdtemp(prefix=".leukodx-backup-", dir=out.parent))
    except OSError as exc:
        raise _write_error(out, exc) from None
    try:
        snap = _snapshot_sqlite if url.get_backend_name() == "sqlite" else _snapshot_postgres
        for attempt in range(3):
            try:
                db_file, facts = snap(url, staging)
            except OSError as exc:
                raise _write_error(out, exc) from None
            good, missing, damaged = _read_files(files_dir, facts["files"])
            if not missing or attempt == 2:
                break
            # a case deleted after the snapshot took its files with it: take a newer snapshot
            db_file.unlink(missing_ok=True)
        if missing and not allow_damaged:
            raise BackupError(
                f"{len(missing)} file(s) the database refers to are not in {files_dir} (e.g. {missing[0]}).",
                "Check --files-dir, or add --allow-damaged to back up everything else (the manifest lists them).")
        if damaged and not allow_damaged:
            raise BackupError(
                f"{len(damaged)} stored file(s) in {files_dir} are damaged: {damaged[0]['name']}: "
                f"{damaged[0]['problem']}.",
                "Add --allow-damaged to back up everything else (the manifest lists them).")
        damaged += [{"name": n, "problem": "missing from the files folder"} for n in missing]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "leukodx_version": __version__,
            "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "database": {
                "dialect": url.get_backend_name(), "member": db_file.name, "source": database.describe_url(url),
                "schema_revision": facts["schema_revision"], "sha256": file_sha256(db_file),
                "bytes": db_file.stat().st_size,
            },
            "counts": facts["counts"],
            "files": {"count": len(good), "bytes": sum(len(d) for d in good.values()),
                      "items": [{"name": n, "sha256": n.split(".")[0], "bytes": len(good[n])} for n in sorted(good)]},
            "damaged": damaged,
        }
        _write_archive(out, manifest, db_file, good)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_error(out: Path, exc: OSError) -> BackupError:
    reason = exc.strerror or str(exc)
    return BackupError(f"Could not write the backup {out}: {reason}.",
                       "Free space or choose another --out; nothing was written under that name.")


def _write_archive(out: Path, manifest: dict, db_file: Path, files: dict[str, bytes]) -> None:
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
                _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
                _add(tar, db_file.name, db_file)
                for name in sorted(files):
                    _add(tar, f"files/{name}", files[name])
            raw.flush()
            os.fsync(raw.fileno())
        read_archive(Path(tmp), None)  # read back: every byte where it should be, before it gets the name
        os.replace(tmp, out)
        tmp = None
        fsync_dir(out.parent)
    except OSError as exc:
        raise _write_error(out, exc) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# --- reading and checking an archive -----------------------------------------------------------------------

def _damaged(archive: Path, why: str) -> BackupError:
    return BackupError(f"The backup {archive} is damaged or truncated ({why}).",
                       "Nothing was changed; use another backup.")


def read_archive(archive: Path, staging: Path | None) -> dict:
    """Read the whole archive, check every member against the manifest, and (with `staging`) write the
    database to staging/<member> and the files to staging/files/. Returns the manifest."""
    archive = Path(archive)
    if not archive.is_file():
        raise BackupError(f"There is no backup file {archive}.", "Check the path.")
    manifest = None
    seen: dict[str, str] = {}
    if staging is not None:
        (staging / "files").mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for m in tar:
                if not m.isfile():
                    raise _damaged(archive, f"unexpected entry {m.name!r}")
                fh = tar.extractfile(m)
                if fh is None:  # a regular file (checked above) always has its bytes
                    raise _damaged(archive, f"entry {m.name!r} cannot be read")
                if m.name == MANIFEST:
                    manifest = _check_manifest(archive, json.loads(fh.read()))
                    continue
                if manifest is None:
                    raise _damaged(archive, "it does not start with a leukodx manifest: not a leukodx backup")
                if m.name != manifest["database"]["member"] and not (m.name.startswith("files/")
                                                                     and NAME_RE.match(m.name[6:])):
                    raise _damaged(archive, f"unexpected entry {m.name!r}")
                h = hashlib.sha256()
                with open(staging / m.name, "wb") if staging is not None else nullcontext() as out:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                        if out is not None:
                            out.write(chunk)
                seen[m.name] = h.hexdigest()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _damaged(archive, str(exc) or exc.__class__.__name__) from None
    except (KeyError, TypeError, ValueError) as exc:  # JSON that is not a complete manifest
        raise _damaged(archive, f"its manifest is incomplete ({exc.__class__.__name__}: {exc})") from None
    if manifest is None:
        raise _damaged(archive, "no manifest.json: not a leukodx backup")
    db = manifest["database"]
    if seen.get(db["member"]) != db["sha256"]:
        raise _damaged(archive, "the database in it is missing or does not match the manifest's sha256")
    want = {f"files/{i['name']}": i["sha256"] for i in manifest["files"]["items"]}
    for name, sha in want.items():
        if name.split("/")[1].split(".")[0] != sha:
            raise _damaged(archive, f"the manifest's hash of {name} is not its name")
        if seen.get(name) != sha:
            problem = "missing" if name not in seen else "does not match its sha256"
            raise _damaged(archive, f"{name} is {problem}")
    extra = set(seen) - set(want) - {db["member"]}
    if extra:
        raise _damaged(archive, f"{len(extra)} file(s) not in the manifest, e.g. {sorted(extra)[0]}")
    return manifest


def _check_manifest(archive: Path, manifest: dict) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _damaged(archive, "its manifest is not a leukodx backup manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupError(
            f"The backup {archive} was written by leukodx {manifest.get('leukodx_version')} in a newer archive "
            f"format ({manifest['format_version']}).", "Upgrade leukodx to restore it; nothing was changed.")
    if manifest["database"]["member"] not in (SQLITE_MEMBER, PG_MEMBER):
        raise _damaged(archive, "its manifest names an unknown database member")
    if not all(NAME_RE.match(i["name"]) for i in manifest["files"]["items"]):
        raise _damaged(archive, "its manifest names a file that is not a content-hash name")
    rev = manifest["database"]["schema_revision"]
    if not database.is_known_revision(rev):
        raise BackupError(
            f"The backup {archive} has schema revision {rev}, newer than this leukodx {__version__} understands "
            f"(newest: {database.head_revision()}), from leukodx {manifest.get('leukodx_version')}.",
            "Upgrade leukodx to restore it; nothing was changed.")
    return manifest


# --- restore -----------------------------------------------------------------------------------------------

def _rows_in(url: URL) -> int:
    """The rows in the database's tables, the schema's version left out."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url, **({"connect_args": {"timeout": 30}} if url.get_backend_name() == "sqlite" else {}))
    try:
        with database._connect_errors(engine), engine.connect() as conn:
            return sum(int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() or 0)
                       for t in inspect(conn).get_table_names() if t not in ("alembic_version", "schema_migrations"))
    finally:
        engine.dispose()


def _place_files(staging: Path, files_dir: Path, manifest: dict) -> int:
    """Move the checked files into the store (content-addressed: a file already there is the same file)."""
    files_dir.mkdir(parents=True, exist_ok=True)
    added = 0
    for item in manifest["files"]["items"]:
        src, dst = staging / "files" / item["name"], files_dir / item["name"]
        if dst.is_file() and dst.stat().st_size == item["bytes"] and file_sha256(dst) == item["sha256"]:
            continue
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(src, dst)
        except OSError:  # another file system: copy, then rename inside the store
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=files_dir)
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                shutil.copyfileobj(fh, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dst)
        added += 1
    fsync_dir(files_dir)
    return added


def _restore_sqlite(staged: Path, url: URL) -> None:
    target = _sqlite_path(url)
    with closing(sqlite3.connect(staged)) as con:
        try:
            check = con.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as exc:
            check = str(exc)
    if check != "ok":
        raise BackupError(f"The database in the backup is damaged ({check}).", "Nothing was changed; use another backup.")
    # an older backup: bring the staged copy to this leukodx's schema before it replaces anything
    engine = database.make_engine(f"sqlite:///{staged}")
    database.migrate(engine)
    engine.dispose()
    with closing(sqlite3.connect(staged)) as con:
        con.execute("PRAGMA journal_mode=DELETE")  # everything in the one file (no -wal) before it moves
    if not target.exists():
        for suffix in ("-wal", "-shm", "-journal"):  # left over from a database that is gone
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, target)
        fsync_dir(target.parent)
        return
    with closing(sqlite3.connect(staged)) as src, closing(sqlite3.connect(target, timeout=60)) as dst:
        try:
            src.backup(dst)  # one write transaction on the target: all of it or, on failure, none
        except sqlite3.Error as exc:
            raise BackupError(f"Could not write the database {target}: {exc}.",
                              "Stop leukodx serve and try again; the database was left as it was.") from None


def _restore_postgres(staged: Path, url: URL) -> None:
    """Drop leukodx's tables (empty, or --force) and load the dump, in ONE transaction: on any error psql
    rolls it all back and the database is as it was."""
    psql = _tool("psql")
    args, env = libpq_args(url)
    drop = " ".join(f'DROP TABLE IF EXISTS public."{t}" CASCADE;' for t in LEUKODX_TABLES)
    drop += " DROP FUNCTION IF EXISTS public.audit_log_append_only() CASCADE;"
    cmd = [psql, *args, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-c", drop, "-f", str(staged)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise BackupError(f"Restoring into {database.describe_url(url)} failed: {_last_line(r.stderr)}.",
                          "The database was left as it was (one transaction).")
    engine = database.make_engine(url)
    try:
        database.migrate(engine)
    finally:
        engine.dispose()


def restore(archive: Path, db_url: str, files_dir: Path, force: bool = False) -> dict:
    """Restore `archive` into the database `db_url` and the store `files_dir`. Refuses a database that holds
    rows unless `force`. Returns the manifest plus what was done."""
    url = database.normalize_url(db_url)
    dialect = url.get_backend_name()
    files_dir = Path(files_dir)
    if dialect == "sqlite":
        target = _sqlite_path(url)
        if not target.parent.is_dir():
            raise BackupError(f"The folder for the database {target} does not exist.", "Create it, or pass another --db.")
        base = target.parent
        nonempty = _rows_in(url) if target.exists() else 0
    else:
        base = files_dir.parent if files_dir.parent.is_dir() else Path(tempfile.gettempdir())
        nonempty = _rows_in(url)
    if nonempty and not force:
        raise BackupError(f"{_upper(database.describe_url(url))} is not empty ({nonempty} rows).",
                          "Restore into a new database, or add --force to replace it.")
    staging = Path(tempfile.mkdtemp(prefix=".leukodx-restore-", dir=base))
    try:
        manifest = read_archive(Path(archive), staging)
        if manifest["database"]["dialect"] != dialect:
            raise BackupError(
                f"The backup holds a {manifest['database']['dialect']} database; --db is {dialect}.",
                "Restore it into the same kind of database it came from.")
        added = _place_files(staging, files_dir, manifest)
        load = _restore_sqlite if dialect == "sqlite" else _restore_postgres
        load(staging / manifest["database"]["member"], url)
        engine = database.make_engine(url)
        try:
            with engine.connect() as conn:
                counts = _snapshot_facts(conn)["counts"]
        finally:
            engine.dispose()
        if counts != manifest["counts"]:
            raise BackupError(f"The restored database has {counts} rows, the backup's manifest says "
                              f"{manifest['counts']}.", "Report this; keep the archive.")
        return {**manifest, "restored": {"files_added": added, "files_dir": str(files_dir), "counts": counts}}
    except OSError as exc:
        raise BackupError(f"Restore failed: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''}).",
                          "Free space or fix permissions, then run it again.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
