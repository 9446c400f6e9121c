"""cells per field, the case's differential, amendments after sign-off, specimen and stain, one-time form tokens

- fields.cells: the leukocytes of the field with the AI's and the reviewer's class, backfilled from the cells
  that the stored analysis result already held (no AI class: those fields were analysed before cell classes).
- cases.specimen, cases.stain: shown on the report.
- cases.amendments: every change made after sign-off (who, when, reason, before, after).
- cases.cell_summary: the differential count and blast % of the AI and of the reviewer (recomputed by the app).
- form_submissions: one-time form tokens already used (a double submit of a form does its work once).

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-15
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
CELL_KEYS = ("id", "area_px", "centroid", "bbox", "area_um2", "touches_border", "ai_label", "ai_confidence")


def _cells_of(result) -> list[dict]:
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            return []
    cells = (result or {}).get("cells") or [] if isinstance(result, dict) else []
    out = []
    for c in cells:
        if isinstance(c, dict) and "id" in c and "bbox" in c:
            d = {k: c.get(k) for k in CELL_KEYS}
            d.update(label=None, reviewed_by=None, reviewed_at=None)
            out.append(d)
    return out


def upgrade() -> None:
    # plain ADD COLUMN (with a default), never SQLite's copy-and-swap: dropping the old `cases` table would
    # cascade to its fields (foreign keys are on)
    op.add_column("cases", sa.Column("specimen", sa.String(200), nullable=False, server_default="Peripheral blood"))
    op.add_column("cases", sa.Column("stain", sa.String(100), nullable=False, server_default=""))
    op.add_column("cases", sa.Column("amendments", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.add_column("cases", sa.Column("cell_summary", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.add_column("fields", sa.Column("cells", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.create_table(
        "form_submissions",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("result_url", sa.String(300), nullable=False),
    )
    bind = op.get_bind()
    fields = sa.table("fields", sa.column("id", sa.Integer()), sa.column("result", sa.JSON()),
                      sa.column("cells", sa.JSON()))
    for fid, result in bind.execute(sa.select(fields.c.id, fields.c.result)).all():
        cells = _cells_of(result)
        if cells:
            bind.execute(fields.update().where(fields.c.id == fid).values(cells=cells))


def downgrade() -> None:
    raise NotImplementedError("leukodx does not downgrade a database; restore a backup instead")
