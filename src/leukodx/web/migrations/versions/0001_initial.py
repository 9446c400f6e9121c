"""initial schema: users, API tokens, login sessions, cases, fields, the append-only audit log

The schema that leukodx's own migration 1 (before Alembic) created, table for table, index for index. A
database made by that code has `schema_migrations` version 1 and no `alembic_version`; `migrate()` stamps it
at this revision instead of running it.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schema_migrations",  # the pre-Alembic record of applied versions, kept for older leukodx releases
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("applied_at", TZ, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_users_username", "users", ["username"], unique=True)
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
    )
    op.create_index("ix_api_tokens_name", "api_tokens", ["name"])
    op.create_index("ix_api_tokens_token_hash", "api_tokens", ["token_hash"], unique=True)
    op.create_table(
        "login_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
    )
    op.create_index("ix_login_sessions_user_id", "login_sessions", ["user_id"])
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("reference", sa.String(100), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("n_fields", sa.Integer(), nullable=False),
        sa.Column("ai_label", sa.String(20), nullable=True),
        sa.Column("ai_confidence", sa.Float(), nullable=True),
        sa.Column("ai_malignant_probability", sa.Float(), nullable=True),
        sa.Column("total_cell_count", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("review_decision", sa.String(20), nullable=True),
        sa.Column("review_label", sa.String(20), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=False),
        sa.Column("reviewed_by", sa.String(100), nullable=True),
        sa.Column("reviewed_at", TZ, nullable=True),
    )
    op.create_index("ix_cases_flagged", "cases", ["flagged"])
    op.create_index("ix_cases_review_decision", "cases", ["review_decision"])
    op.create_index("ix_cases_reference", "cases", ["reference"])
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("image_file", sa.String(100), nullable=False),
        sa.Column("overlay_file", sa.String(100), nullable=True),
        sa.Column("heatmap_file", sa.String(100), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("uploaded_by", sa.String(100), nullable=False),
        sa.Column("uploaded_at", TZ, nullable=False),
        sa.Column("label", sa.String(20), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("malignant_probability", sa.Float(), nullable=False),
        sa.Column("cell_count", sa.Integer(), nullable=False),
        sa.Column("flag", sa.String(30), nullable=False),
        sa.Column("flag_reason", sa.Text(), nullable=False),
        sa.Column("size_note", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("review_decision", sa.String(20), nullable=True),
        sa.Column("review_label", sa.String(20), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=False),
        sa.Column("reviewed_by", sa.String(100), nullable=True),
        sa.Column("reviewed_at", TZ, nullable=True),
    )
    op.create_index("ix_fields_case_id", "fields", ["case_id"])
    op.create_index("ix_fields_sha256", "fields", ["sha256"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])

    # the audit log is append-only: the database itself refuses UPDATE and DELETE on it
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
    legacy = sa.table("schema_migrations", sa.column("version", sa.Integer()), sa.column("name", sa.String()),
                      sa.column("applied_at", TZ))
    op.bulk_insert(legacy, [{"version": 1, "name": "initial schema",
                             "applied_at": datetime.now(UTC).replace(microsecond=0)}])


def downgrade() -> None:
    raise NotImplementedError("leukodx does not downgrade a database; restore a backup instead")
