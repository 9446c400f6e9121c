"""`leukodx serve`, `leukodx token create`, `leukodx user add|passwd` (see DESIGN.md)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from leukodx.cli._common import console, err_console
from leukodx.errors import LeukodxError, ModelError

DB_HELP = ("SQLite database file (created if missing), or a database URL such as postgresql+psycopg://... "
           "\\[default: $LEUKODX_DB, else ~/.local/share/leukodx/leukodx.db ($XDG_DATA_HOME/leukodx when set)]")


def resolve_db(db: str | None) -> str:
    """--db, else $LEUKODX_DB, else the per-user data folder (created, private): one default for `serve`,
    `user`, `token`, `backup` and `restore`, never the source checkout or the current folder."""
    from leukodx.web.settings import data_dir, default_database

    if db:
        return db
    if not os.environ.get("LEUKODX_DB"):
        data_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    return default_database()

token_app = typer.Typer(help="API tokens for the HTTP API.", no_args_is_help=True)
user_app = typer.Typer(help="Users of the web application.", no_args_is_help=True)


@contextmanager
def _session(db: str | None):
    """(a session, the database in words) of --db (resolve_db), committed when the block ends without error."""
    from leukodx.web.db import describe_url, open_database
    from leukodx.web.settings import database_url_for

    url = database_url_for(resolve_db(db))
    _, sessions = open_database(url)
    with sessions() as s:
        yield s, describe_url(url)
        s.commit()


def _load_factory(spec: str):
    """`module:attr` -> the object (called when callable), for a test or demo analyzer."""
    import importlib

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise LeukodxError(f"--analyzer {spec!r} is not module:attribute.",
                           "Example: webtools:FakeAnalyzer, with the tests folder on PYTHONPATH.")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if callable(obj) else obj


def _first_admin(sessions, demo: bool) -> None:
    """Make the application usable on first start: an admin (password from LEUKODX_ADMIN_PASSWORD or printed
    once) when there is no user; a demo/demo clinician with --demo."""
    import secrets

    from sqlalchemy import func, select

    from leukodx.web.auth import add_user, hash_password, verify_password
    from leukodx.web.db import User, audit

    with sessions() as db:
        user = db.scalar(select(User).where(User.username == "demo"))
        demo_password = user is not None and verify_password("demo", user.password_hash)
        if demo and (user is None or (demo_password and not user.active)):
            if user is None:
                db.add(User(username="demo", password_hash=hash_password("demo"), role="clinician"))
            else:
                user.active = True
            audit(db, "serve", "user.add", "user:demo", role="clinician", demo=True)
            db.commit()
            err_console.print("[bold yellow]--demo:[/] user [bold]demo[/], password [bold]demo[/] "
                              "(for trying leukodx only; never use --demo with real patients' smears).")
        elif not demo and user is not None and user.active and demo_password:
            # `make run` (serve --demo) left demo/demo in the data folder a clinic then serves: switch it off
            user.active = False
            audit(db, "serve", "user.disable", "user:demo", why="the demo password, served without --demo")
            db.commit()
            err_console.print("[bold yellow]note:[/] user [bold]demo[/] (password demo, made by `make run`) is "
                              "switched off because this server runs without --demo.")
        if db.scalar(select(func.count(User.id)).where(User.role == "admin")):
            return
        given = os.environ.get("LEUKODX_ADMIN_PASSWORD")
        password = given or secrets.token_urlsafe(12)
        add_user(db, "admin", password, "admin", actor="serve")
        db.commit()
    if not given:
        console.print(
            "\n[bold]First start: an administrator was created.[/]\n"
            f"  user name: [bold]admin[/]\n  password:  [bold]{password}[/]\n"
            "This password is shown only now. Log in, then change it under your name (top right).\n",
            highlight=False,
        )
    else:
        console.print("First start: user [bold]admin[/] created with the password in LEUKODX_ADMIN_PASSWORD.")


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Only this computer can connect unless "
                             "you give 0.0.0.0 (then put it behind HTTPS)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    files_dir: Path = typer.Option(None, "--files-dir", help="Where images are kept \\[default: beside the database]."),
    classifier: Path = typer.Option(None, "--classifier", help="Classifier model directory \\[default: bundled]."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Segmenter model directory \\[default: bundled]."),
    cells: Path = typer.Option(None, "--cells", help="Cell model directory to start with, e.g. A/cells of `leukodx "
                               "adapt` (an admin may activate another on the Adapt page) \\[default: bundled]."),
    engine: str = typer.Option(None, help="Inference engine: onnx or onnx-int8 (default: onnx)."),
    max_file_mb: float = typer.Option(None, "--max-file-mb", min=0.01,
                                      help="Largest accepted image, MB (default: $LEUKODX_MAX_FILE_MB, else 20)."),
    max_files: int = typer.Option(None, "--max-files", min=1,
                                  help="Most images per upload request (default: $LEUKODX_MAX_FILES, else 50)."),
    workers: int = typer.Option(1, "--workers", min=1, max=64,
                                help="Server processes (uvicorn workers). More than 1 needs a PostgreSQL --db."),
    analysis_workers: int = typer.Option(None, "--analysis-workers", min=1,
                                         help="Analyses run at once per process \\[default: CPU cores / --workers, "
                                         "max 4]."),
    threads: int = typer.Option(None, "--threads", min=1,
                                help="CPU threads per analysis \\[default: cores / (workers x analysis workers)]."),
    queue: int = typer.Option(None, "--queue", min=0, help="Analyses allowed to wait; more are answered 503 "
                              "(default: 32)."),
    heatmap_on_upload: bool = typer.Option(False, "--heatmap-on-upload",
                                           help="Compute heat maps with every upload (else on first view)."),
    secure_cookies: bool = typer.Option(False, "--secure-cookies",
                                        help="Send the login cookie over HTTPS only (behind an HTTPS proxy)."),
    demo: bool = typer.Option(False, "--demo", help="Also create user demo / password demo. For trying only."),
    analyzer: str = typer.Option(None, "--analyzer", hidden=True, help="module:factory of a test analyzer."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the clinicians' web application and its HTTP API (open http://HOST:PORT in a browser)."""
    import uvicorn
    from pydantic import ValidationError

    from leukodx.web.app import create_app
    from leukodx.web.settings import Settings

    if engine not in (None, "onnx", "onnx-int8"):
        raise LeukodxError(f"--engine {engine!r} is not one the web app runs (it runs ONNX models, as a clinic PC "
                           "without torch does).", "Use onnx or onnx-int8; export a model first with "
                           "`leukodx export onnx --model RUN --out RUN/model.onnx`.")
    cores = os.cpu_count() or 1
    if workers > 1 and analysis_workers is None:
        analysis_workers = max(1, min(4, cores) // workers)
    if workers > 1 and threads is None:
        threads = max(1, cores // (workers * analysis_workers))
    # only what was given on the command line overrides the environment (LEUKODX_*) and the defaults
    try:
        settings = Settings.from_env(
            database_url=resolve_db(db), files_dir=files_dir, classifier_dir=classifier, segmenter_dir=segmenter,
            cells_dir=cells, engine=engine,
            max_file_mb=max_file_mb, max_files=max_files, analysis_workers=analysis_workers, analysis_threads=threads,
            analysis_queue=queue, cookie_secure=secure_cookies or None, heatmap_on_upload=heatmap_on_upload or None,
        )
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0]).upper().removeprefix("LEUKODX_")
        raise LeukodxError(f"The setting {name.lower()} is not valid: {exc.errors()[0]['msg']}.",
                           f"Check its flag, or the environment variable LEUKODX_{name}.") from None
    if workers > 1 and settings.is_sqlite:
        raise LeukodxError(
            f"--workers {workers} needs a PostgreSQL database: SQLite lets one process write at a time, so more "
            "server processes would only queue on its lock.",
            "Use --workers 1 (the default) with a SQLite file, or --db postgresql://USER:PASSWORD@HOST/DATABASE.")
    fake = _load_factory(analyzer) if analyzer else None
    if fake is None:
        from leukodx.assets import default_model_dir

        try:
            if classifier is None:
                default_model_dir("classify")
            if segmenter is None:
                default_model_dir("segment")
        except ModelError as exc:
            raise ModelError(exc.problem, "Reinstall leukodx, or give model directories of your own with "
                             "--classifier RUN --segmenter RUN.") from None
        for d in (classifier, segmenter, cells):
            if d is not None and not (Path(d) / "config.json").is_file():
                raise LeukodxError(f"{d} is not a model directory (no config.json).", "Give a RUN folder from `leukodx train`.")
    # migrations, the sweep of interrupted uploads and the first admin: once, here, before any worker starts
    if not settings.is_sqlite:  # other leukodx processes or PCs may be storing images while this one starts
        from leukodx.web.storage import FileStore

        FileStore.sweep_min_age_s = WORKER_SWEEP_MIN_AGE_S
    app = create_app(settings, analyzer=fake)
    _first_admin(app.state.ctx.sessions, demo)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[bold yellow]warning:[/] listening on {host}: other computers can reach leukodx. "
                          "Use HTTPS (a reverse proxy) on a shared network.")
    from leukodx.web.db import describe_url

    console.print(f"Patient data: {describe_url(settings.database_url)}, images in {settings.resolved_files_dir()} "
                  "(--db, $LEUKODX_DB or --files-dir choose another place).", highlight=False, soft_wrap=True)
    console.print(f"leukodx is starting: open [bold]http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}[/]"
                  f"{f' ({workers} processes)' if workers > 1 else ''}. Ctrl+C stops it.", highlight=False)
    def run(target, **more) -> None:
        uvicorn.run(target, host=host, port=port, log_level=log_level, limit_concurrency=256, timeout_keep_alive=5,
                    timeout_graceful_shutdown=10, **more)

    if workers == 1:
        run(app)
        return
    app.state.ctx.engine.dispose()
    os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()
    if analyzer:
        os.environ[WORKER_ANALYZER_ENV] = analyzer
    run("leukodx.cli.serve:worker_app", factory=True, workers=workers)


WORKER_SETTINGS_ENV = "LEUKODX_SERVE_WORKER_SETTINGS"
WORKER_ANALYZER_ENV = "LEUKODX_SERVE_WORKER_ANALYZER"
# on PostgreSQL a server may start (or a worker be restarted) while others take uploads: its start-up sweep
# leaves files younger than this alone
WORKER_SWEEP_MIN_AGE_S = 3600.0


def worker_app():
    """The application in one `serve --workers N` process (uvicorn calls this in each worker). The parent
    process already migrated the database and swept the image store; the settings come from it."""
    from leukodx.web.app import create_app
    from leukodx.web.settings import Settings
    from leukodx.web.storage import FileStore

    settings = Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV])
    spec = os.environ.get(WORKER_ANALYZER_ENV)
    FileStore.sweep_min_age_s = WORKER_SWEEP_MIN_AGE_S
    return create_app(settings, analyzer=_load_factory(spec) if spec else None)


@token_app.command("create")
def token_create(
    name: str = typer.Option(..., "--name", help="Who or what will use the token, e.g. lab-pc-1."),
    role: str = typer.Option("clinician", "--role", help="clinician or admin."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Create an API token. It is printed once, on the last line; only its hash is stored."""
    from leukodx.web.auth import create_token

    with _session(db) as (s, where):
        _, secret = create_token(s, name, role, actor="cli")
    err_console.print(f"Token {name!r} ({role}) created in {where}. It is shown only once; keep it secret. "
                      "Send it as 'Authorization: Bearer <token>'.", highlight=False, soft_wrap=True)
    typer.echo(secret)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="User name (letters, digits, _ . @ -)."),
    role: str = typer.Option("clinician", "--role", help="clinician or admin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Add a user of the web application (the password is asked for, or read with --password-stdin)."""
    from leukodx.web.auth import add_user, check_role

    check_role(role)
    with _session(db) as (s, where):
        add_user(s, name, _read_password(password_stdin), role, actor="cli")
    console.print(f"User [bold]{name}[/] ({role}) added to {where}.", highlight=False, soft_wrap=True)


@user_app.command("passwd")
def user_passwd(
    name: str = typer.Argument(..., help="User name."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Set a user's password (their login sessions end)."""
    from leukodx.web.auth import set_password

    with _session(db) as (s, where):
        set_password(s, name, _read_password(password_stdin), actor="cli")
    console.print(f"Password of [bold]{name}[/] changed in {where}.", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(token_app, name="token")
    app.add_typer(user_app, name="user")
