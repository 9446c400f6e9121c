"""The case store: SQLAlchemy 2 models, engine set-up and schema migrations (Alembic, see migrations/).

SQLite by default (WAL journal, full fsync, foreign keys on); a PostgreSQL URL works the same.
`open_database()` migrates the database to the newest schema every time leukodx opens it.
The audit log is append-only: the database itself refuses UPDATE and DELETE on it (triggers).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from leukodx import __version__
from leukodx.errors import LeukodxError


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Base(DeclarativeBase):
    pass


class SchemaMigration(Base):
    __tablename__ = "schema_migrations"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20), default="clinician")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 hex
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists, never enough to use
    role: Mapped[str] = mapped_column(String(20), default="clinician")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="cli")
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginSession(Base):
    __tablename__ = "login_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie value
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[User] = relationship(lazy="joined")


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(100), index=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the AI's case summary (recomputed from the fields after every upload)
    n_fields: Mapped[int] = mapped_column(Integer, default=0)
    ai_label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    ai_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    ai_malignant_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_cell_count: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    # the clinician's decision (the AI's output above is kept as it was)
    review_decision: Mapped[str | None] = mapped_column(String(20), nullable=True, index=True)
    review_label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    review_note: Mapped[str] = mapped_column(Text, default="")
    reviewed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the specimen (for the report), and what changed after sign-off (revision 0002)
    specimen: Mapped[str] = mapped_column(String(200), default="Peripheral blood")
    stain: Mapped[str] = mapped_column(String(100), default="")
    # [{"n", "by", "at", "reason", "what", "before", "after"}], oldest first; only appended to (the last one takes
    # in the verification given again that its own change withdrew: store.verify_differential)
    amendments: Mapped[list] = mapped_column(JSON, default=list)
    # the differential count and blast % of the AI and of the reviewer (leukodx.web.cells.cell_summary)
    cell_summary: Mapped[dict] = mapped_column(JSON, default=dict)
    # the lab's accession number and the patient's identifier (revision 0003); "" when not given
    accession: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    # the differential: its target count (Settings.differential_target when the case was made) and whether a
    # reviewer verified the cells' classes (revision 0003); any later change of a cell's class unverifies it
    differential_target: Mapped[int] = mapped_column(Integer, default=100)
    differential_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    differential_verified_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    differential_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    differential_note: Mapped[str] = mapped_column(Text, default="")
    fields: Mapped[list[Field]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="Field.id", passive_deletes=True
    )


class Field(Base):
    """One uploaded smear field (image) of a case, with the AI's result and the reviewer's decision."""

    __tablename__ = "fields"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_file: Mapped[str] = mapped_column(String(100))  # <sha256>.<ext>, never the client's name
    overlay_file: Mapped[str | None] = mapped_column(String(100), nullable=True)
    heatmap_file: Mapped[str | None] = mapped_column(String(100), nullable=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")  # sanitised, for display only
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    uploaded_by: Mapped[str] = mapped_column(String(100))
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    probabilities: Mapped[dict] = mapped_column(JSON, default=dict)
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    malignant_probability: Mapped[float] = mapped_column(Float, default=0.0)
    cell_count: Mapped[int] = mapped_column(Integer, default=0)
    flag: Mapped[str] = mapped_column(String(30), default="ok")
    flag_reason: Mapped[str] = mapped_column(Text, default="")
    size_note: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict] = mapped_column(JSON, default=dict, deferred=True)  # the full result (cells etc.)
    review_decision: Mapped[str | None] = mapped_column(String(20), nullable=True)
    review_label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    review_note: Mapped[str] = mapped_column(Text, default="")
    reviewed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the leukocytes: [{"id", "area_px", "centroid", "bbox", ..., "ai_label", "ai_confidence", "label",
    # "reviewed_by", "reviewed_at"}] (revision 0002; see leukodx.web.cells)
    cells: Mapped[list] = mapped_column(JSON, default=list)
    # the version of the cell model that pre-classified the cells (revision 0004; None: analysed before)
    cell_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    case: Mapped[Case] = relationship(back_populates="fields")


class FormSubmission(Base):
    """A one-time form token that was used: a second submission of the same form finds it and is answered
    with the first one's result instead of doing the work again (a double click makes one case)."""

    __tablename__ = "form_submissions"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    result_url: Mapped[str] = mapped_column(String(300), default="")


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60), index=True)
    target: Mapped[str] = mapped_column(String(100), default="")
    detail: Mapped[str] = mapped_column(Text, default="")  # JSON text


def audit(session, actor: str, action: str, target: str = "", **detail) -> None:
    """Add an audit entry to the session's transaction (it commits with the change it describes)."""
    session.add(AuditEntry(actor=actor, action=action, target=target, detail=json.dumps(detail, default=str)))


# --- migrations (Alembic; the scripts are in leukodx/web/migrations) -------------------------------------------

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
LEGACY_VERSION = 1  # the newest version of the pre-Alembic `schema_migrations` table this leukodx knows
_PG_LOCK_KEY = 0x6C65756B6F6478  # "leukodx": one migrating process at a time per PostgreSQL database


def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The schema revision this leukodx creates and understands best (Alembic head)."""
    return _scripts().get_current_head()


def is_known_revision(rev: str | None) -> bool:
    if rev is None:
        return True
    try:
        return _scripts().get_revision(rev) is not None
    except Exception:
        return False


def newer_schema_error(what: str, rev: str) -> LeukodxError:
    return LeukodxError(
        f"{what} has schema revision {rev}, newer than this leukodx {__version__} understands (newest: "
        f"{head_revision()}).", "Upgrade leukodx, or point --db at another database.")


def current_revision(conn: Connection) -> str | None:
    """The database's schema revision: Alembic's, or 0001 for a database of leukodx before Alembic
    (`schema_migrations` version 1), or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    heads = MigrationContext.configure(conn).get_current_heads()
    if heads:
        return heads[0] if len(heads) == 1 else ",".join(sorted(heads))
    if "schema_migrations" in inspect(conn).get_table_names():
        legacy = conn.execute(text("SELECT max(version) FROM schema_migrations")).scalar()
        if legacy is not None:
            if legacy > LEGACY_VERSION:
                raise LeukodxError(
                    f"The database has schema version {legacy}, newer than this leukodx {__version__} "
                    "understands.", "Upgrade leukodx, or point --db at another database.")
            return "0001"
    return None


@contextmanager
def _migration_transaction(engine: Engine):
    """One connection in one write transaction that other migrating processes wait for: SQLite's
    BEGIN IMMEDIATE (the database write lock), PostgreSQL's transaction-scoped advisory lock."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def migrate(engine: Engine) -> list[str]:
    """Bring the database to the newest schema, all revisions in ONE transaction (a failure leaves the database
    as it was). Returns the revisions applied. A database of leukodx before Alembic is recognised (version 1 in
    `schema_migrations`) and taken over at revision 0001; one from a newer leukodx is refused."""
    from alembic import command

    with _connect_errors(engine), _migration_transaction(engine) as conn:
        before = current_revision(conn)
        if before is not None and "," not in before and not is_known_revision(before):
            raise newer_schema_error("The database", before)
        cfg = alembic_config(conn)
        if before == "0001" and "alembic_version" not in inspect(conn).get_table_names():
            command.stamp(cfg, "0001")  # made by the pre-Alembic migration 1: the same schema
        command.upgrade(cfg, "head")
        applied = [s.revision for s in _scripts().iterate_revisions("head", before or "base")
                   if s.revision != before]
    return list(reversed(applied))


# --- engines and connections ----------------------------------------------------------------------------------

def describe_url(url: str | URL) -> str:
    """Where a URL points, for messages (never the password)."""
    u = make_url(url) if isinstance(url, str) else url
    if u.get_backend_name() == "sqlite":
        return f"the SQLite database {u.database or ':memory:'}"
    host = u.host or u.query.get("host") or "localhost (Unix socket)"
    if isinstance(host, tuple):
        host = ",".join(host)
    port = f":{u.port}" if u.port else ""
    return f"the PostgreSQL database {u.database or '(default)'} on {host}{port}"


def _cause(exc: BaseException) -> str:
    """The driver's reason, on one line: 'connection refused', 'password authentication failed ...'."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    text_ = lines[0] if lines else orig.__class__.__name__
    # psycopg: 'connection failed: connection to server at "h" (1.2.3.4), port 5432 failed: FATAL:  reason'
    if "failed:" in text_:
        text_ = text_.rsplit("failed:", 1)[1].strip()
    text_ = text_.removeprefix("FATAL:").strip()
    hint = next((ln for ln in lines[1:] if ln.startswith("Is the server")), "")
    return f"{text_} ({hint.rstrip('?')}?)" if hint else text_


@contextmanager
def _connect_errors(engine: Engine):
    """A database that cannot be reached or opened becomes one line naming the host and the cause."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        yield
    except OperationalError as exc:
        if engine.dialect.name == "sqlite":
            raise LeukodxError(f"Cannot open {describe_url(engine.url)}: {_cause(exc)}.",
                               "Check the path and its permissions, or pass another --db.") from None
        raise LeukodxError(f"Cannot connect to {describe_url(engine.url)}: {_cause(exc)}.",
                           "Check that the server runs and the --db URL's host, port, user, password and "
                           "database name.") from None
    except DBAPIError as exc:
        if exc.connection_invalidated or engine.dialect.name != "postgresql":
            raise
        raise LeukodxError(f"{describe_url(engine.url)} refused leukodx: {_cause(exc)}.",
                           "Check the --db URL's user and its rights on that database.") from None


def normalize_url(url: str) -> URL:
    """A SQLAlchemy URL; `postgresql://` and `postgres://` mean the psycopg 3 driver leukodx ships with."""
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise LeukodxError(f"--db {url!r} is neither a file name nor a database URL.",
                           "Give a SQLite file, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE.") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL) -> Engine:
    from sqlalchemy import create_engine, event

    u = normalize_url(url) if isinstance(url, str) else url
    if u.get_backend_name() == "sqlite":
        engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        return engine
    if u.get_backend_name() != "postgresql":
        raise LeukodxError(f"leukodx does not support {u.get_backend_name()} databases.",
                           "Use a SQLite file or a postgresql:// URL.")
    try:
        return create_engine(u, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise LeukodxError(f"PostgreSQL needs the {exc.name} driver, which is not installed.",
                           "Install it with: pip install 'leukodx[postgres]'.") from None


def open_database(url: str) -> tuple[Engine, sessionmaker]:
    """Engine + session factory for `url`, migrated to the current schema."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            raise LeukodxError(f"The folder for the database {path} does not exist.", "Create it, or pass another --db.")
    engine = make_engine(url)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
