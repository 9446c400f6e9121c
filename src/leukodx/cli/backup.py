"""`leukodx backup` and `leukodx restore`: the case store (database + images) to one archive and back."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from leukodx.cli._common import console, err_console
from leukodx.cli.serve import DB_HELP, resolve_db

FILES_HELP = "Where the images are kept \\[default: as `leukodx serve` has it: beside a SQLite file, or $LEUKODX_FILES_DIR]."


def _files_dir(db: str, files_dir: Path | None) -> Path:
    from leukodx.web.settings import Settings, database_url_for

    return Settings.from_env(database_url=database_url_for(db), files_dir=files_dir).resolved_files_dir()


def backup(
    db: str = typer.Option(None, "--db", help=DB_HELP),
    out: Path = typer.Option(..., "--out", help="The archive to write, e.g. /backup/leukodx-2026-01-31.tar.gz."),
    files_dir: Path = typer.Option(None, "--files-dir", help=FILES_HELP),
    allow_damaged: bool = typer.Option(False, "--allow-damaged",
                                       help="Back up even if stored files are missing or damaged (listed in the "
                                       "manifest) instead of stopping."),
) -> None:
    """Back up the cases: the database and its images in one archive, consistent while the server runs.

    SQLite is copied with its online backup API, PostgreSQL with pg_dump. Every image is checked against its
    content-hash name. The archive appears under its name only when it is complete and checked."""
    from leukodx.web.backup import backup as run_backup
    from leukodx.web.settings import database_url_for

    db = resolve_db(db)
    t0 = time.perf_counter()
    m = run_backup(database_url_for(db), _files_dir(db, files_dir), out, allow_damaged=allow_damaged)
    c = m["counts"]
    size_mb = Path(out).stat().st_size / 2**20
    console.print(f"Backup written: [bold]{out}[/] ({c['cases']} cases, {c['fields']} fields, {c['users']} users, "
                  f"{m['files']['count']} files, {size_mb:.1f} MB, schema {m['database']['schema_revision']}) in "
                  f"{time.perf_counter() - t0:.1f} s.", highlight=False, soft_wrap=True)
    if m["damaged"]:
        err_console.print(f"[bold yellow]warning:[/] {len(m['damaged'])} file(s) were missing or damaged and are "
                          f"not in the backup (listed in its manifest), e.g. {m['damaged'][0]['name']}.",
                          highlight=False, soft_wrap=True)


def restore(
    archive: Path = typer.Argument(..., help="An archive from `leukodx backup`."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    files_dir: Path = typer.Option(None, "--files-dir", help=FILES_HELP),
    force: bool = typer.Option(False, "--force", help="Replace a database that already holds cases, users or "
                               "tokens (its rows are lost)."),
    check: bool = typer.Option(False, "--check", help="Only read and check the archive; change nothing."),
) -> None:
    """Restore a backup into a database and its images folder. Stop `leukodx serve` first.

    The whole archive is read and checked (every image's sha256, the schema revision) before anything is
    changed; a database that is not empty is refused unless --force."""
    from leukodx.web import backup as b
    from leukodx.web.settings import database_url_for

    if check:
        m = b.read_archive(archive, None)
        c = m["counts"]
        console.print(f"{archive} is a complete leukodx backup of {m['created']}: {c['cases']} cases, "
                      f"{c['fields']} fields, {m['files']['count']} files, every sha256 matches.", highlight=False, soft_wrap=True)
        return
    db = resolve_db(db)
    m = b.restore(archive, database_url_for(db), _files_dir(db, files_dir), force=force)
    c, r = m["counts"], m["restored"]
    console.print(f"Restored {archive} (made {m['created']} by leukodx {m['leukodx_version']}): {c['cases']} cases, "
                  f"{c['fields']} fields, {c['users']} users; {m['files']['count']} files checked, "
                  f"{r['files_added']} added to {r['files_dir']}.", highlight=False, soft_wrap=True)
    if m["damaged"]:
        err_console.print(f"[bold yellow]warning:[/] the backup lacks {len(m['damaged'])} file(s) that were missing or "
                          f"damaged when it was made (listed in its manifest).", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore)
