"""accession and patient identifier, the differential's target count and its verification

- cases.accession, cases.patient_id: the lab's accession number and the patient's identifier ("" when not given;
  indexed: the case list searches them).
- cases.differential_target: leukocytes to count (Settings.differential_target when the case is made; 100 for
  cases made before).
- cases.differential_verified, _by, _at, cases.differential_note: whether a reviewer verified the cells' classes
  (cases made before were never verified: false).

Fields declared unassessable need no column: fields.review_decision holds "unassessable", fields.review_note
the reason.

Revision ID: 0003
Revises: 0002
Create Date: 2027-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # plain ADD COLUMN with a server default (never SQLite's copy-and-swap, which would cascade to the fields)
    op.add_column("cases", sa.Column("accession", sa.String(64), nullable=False, server_default=""))
    op.add_column("cases", sa.Column("patient_id", sa.String(64), nullable=False, server_default=""))
    op.add_column("cases", sa.Column("differential_target", sa.Integer(), nullable=False, server_default="100"))
    op.add_column("cases", sa.Column("differential_verified", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))
    op.add_column("cases", sa.Column("differential_verified_by", sa.String(100), nullable=True))
    op.add_column("cases", sa.Column("differential_verified_at", TZ, nullable=True))
    op.add_column("cases", sa.Column("differential_note", sa.Text(), nullable=False, server_default=""))
    op.create_index("ix_cases_accession", "cases", ["accession"])
    op.create_index("ix_cases_patient_id", "cases", ["patient_id"])


def downgrade() -> None:
    raise NotImplementedError("leukodx does not downgrade a database; restore a backup instead")
