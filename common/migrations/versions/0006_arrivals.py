"""arrivals: the watcher's cursor over Orthanc's change log, and each stable study. 2026-12-02."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orthanc_change_cursor",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source"),
    )
    op.create_table(
        "study_arrivals",
        sa.Column("orthanc_study_id", sa.String(length=64), nullable=False),
        sa.Column("change_seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("orthanc_study_id", "change_seq"),
    )
    op.create_index("ix_study_arrivals_state", "study_arrivals", ["state"])


def downgrade() -> None:
    op.drop_index("ix_study_arrivals_state", table_name="study_arrivals")
    op.drop_table("study_arrivals")
    op.drop_table("orthanc_change_cursor")
