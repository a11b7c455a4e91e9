"""reading_verdicts.corrected_volumes: what a reader's corrected SEG measures, per finding
(JSON: the finding's Tracking UID, or the segment's label for a lesion the reader added → mL).
2026-12-07."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reading_verdicts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("corrected_volumes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reading_verdicts", schema=None) as batch_op:
        batch_op.drop_column("corrected_volumes")
