"""worklist: the study description, the AI run's state, the AI's key image; break-glass grants.
2026-12-03."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("study_description", sa.String(length=64), nullable=True))
    op.add_column("studies", sa.Column("ai_state", sa.String(length=16), nullable=True))
    op.add_column(
        "inference_results",
        sa.Column("key_sop_instance_uid", sa.String(length=64), nullable=True),
    )
    op.create_table(
        "break_glass_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_break_glass_grants_user_id", "break_glass_grants", ["user_id"])
    op.create_index("ix_break_glass_grants_patient_id", "break_glass_grants", ["patient_id"])
    # The worklist's order (newest first) without sorting the whole index on every page.
    op.create_index("ix_studies_study_date", "studies", ["study_date"])


def downgrade() -> None:
    op.drop_index("ix_studies_study_date", table_name="studies")
    op.drop_table("break_glass_grants")
    op.drop_column("inference_results", "key_sop_instance_uid")
    op.drop_column("studies", "ai_state")
    op.drop_column("studies", "study_description")
