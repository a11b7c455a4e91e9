"""study locks: one run at a time per study, as a lease its holder renews. 2026-12-03."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_locks",
        sa.Column("orthanc_study_id", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("orthanc_study_id"),
    )


def downgrade() -> None:
    op.drop_table("study_locks")
