"""the cell model's version per field

- fields.cell_model: the version (a content hash of its files, `CellClassifier.version`; "adapted-..." for a
  lab's adapted model) of the cell model that pre-classified the field's cells. Fields analysed before have none
  (NULL): they are never re-analysed silently.

Revision ID: 0004
Revises: 0003
Create Date: 2027-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (never SQLite's copy-and-swap)
    op.add_column("fields", sa.Column("cell_model", sa.String(64), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("leukodx does not downgrade a database; restore a backup instead")
