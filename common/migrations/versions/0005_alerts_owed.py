"""inference results: when the clinicians' alert went out (null: owed). 2026-12-02."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True))
    # Results completed before this revision were alerted (or their alert is long past use):
    # they are not owed one now.
    op.execute("UPDATE inference_results SET alerted_at = completed_at WHERE status = 'completed'")


def downgrade() -> None:
    with op.batch_alter_table("inference_results", schema=None) as batch_op:
        batch_op.drop_column("alerted_at")
