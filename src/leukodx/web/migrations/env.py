"""Alembic environment of leukodx: always called from `leukodx.web.db` with an open connection (never from an
ini file), inside the transaction that `migrate()` holds, so all revisions apply together or not at all."""

from __future__ import annotations

from alembic import context

from leukodx.web.db import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("leukodx migrations run through leukodx.web.db.migrate(), which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite = copy and swap
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
