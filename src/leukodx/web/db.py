"""The case store: SQLAlchemy 2 models, engine set-up and versioned schema migrations.

SQLite by default (WAL journal, full fsync, foreign keys on); a PostgreSQL URL works the same.
The audit log is append-only: the database itself refuses UPDATE and DELETE on it (triggers).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

SCHEMA_VERSION = 1


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
    case: Mapped[Case] = relationship(back_populates="fields")


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


# --- migrations -------------------------------------------------------------------------------------------

def _m1_initial(conn: Connection) -> None:
    Base.metadata.create_all(
        conn,
        tables=[t for name, t in Base.metadata.tables.items() if name != "schema_migrations"],
    )
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.execute(text(
                f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            ))
    elif conn.dialect.name == "postgresql":
        conn.execute(text(
            "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql"
        ))
        conn.execute(text(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        ))


# (version, name, function). Append new migrations; never edit an applied one.
MIGRATIONS = [(1, "initial schema", _m1_initial)]


def migrate(engine: Engine) -> list[int]:
    """Apply the migrations the database lacks, each in its own transaction. Returns the versions applied."""
    SchemaMigration.__table__.create(engine, checkfirst=True)
    applied: list[int] = []
    with engine.begin() as conn:
        done = set(conn.execute(select(SchemaMigration.version)).scalars())
    newest = max(done, default=0)
    if newest > SCHEMA_VERSION:
        from leukodx.errors import LeukodxError

        raise LeukodxError(
            f"The database has schema version {newest}, newer than this leukodx understands ({SCHEMA_VERSION}).",
            "Upgrade leukodx, or point --db at another database.",
        )
    for version, name, fn in MIGRATIONS:
        if version in done:
            continue
        with engine.begin() as conn:
            fn(conn)
            conn.execute(SchemaMigration.__table__.insert().values(version=version, name=name, applied_at=utcnow()))
        applied.append(version)
    return applied


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def open_database(url: str) -> tuple[Engine, sessionmaker]:
    """Engine + session factory for `url`, migrated to the current schema."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        from pathlib import Path

        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            from leukodx.errors import LeukodxError

            raise LeukodxError(f"The folder for the database {path} does not exist.", "Create it, or pass another --db.")
    engine = make_engine(url)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def table_names(engine: Engine) -> list[str]:
    return inspect(engine).get_table_names()
