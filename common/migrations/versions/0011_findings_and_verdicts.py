"""AI findings per lesion and the readers' verdicts (IHE AIR / AIRA). 2026-12-07.

- inference_results gains the TID 1500 SR's UIDs (null for readings made before: they have none);
- inference_findings: one row per lesion (its SEG segment, Tracking UID, volume, key slice);
  readings made before have no rows (their SEG had one segment for all lesions), so their
  verdicts can only be on the whole reading;
- reading_verdicts: append-only, one row per verdict given.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sr_series_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sr_sop_instance_uid", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_inference_results_sr_sop_instance_uid", ["sr_sop_instance_uid"], unique=False
        )
    op.create_table(
        "inference_findings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("inference_results.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("tracking_uid", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("volume_ml", sa.Float(), nullable=False),
        sa.Column("key_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("fhir_observation_id", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("result_id", "number", name="uq_finding_number"),
        sa.UniqueConstraint("tracking_uid", name="uq_finding_tracking_uid"),
    )
    op.create_index("ix_inference_findings_result_id", "inference_findings", ["result_id"])
    op.create_table(
        "reading_verdicts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("inference_results.id"), nullable=False),
        sa.Column("finding_tracking_uid", sa.String(length=64), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("corrected_seg_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("fhir_sent_at", sa.DateTime(), nullable=True),
        sa.Column("fhir_note", sa.String(length=255), nullable=True),
        sa.UniqueConstraint("uid", name="uq_reading_verdict_uid"),
    )
    op.create_index("ix_reading_verdicts_result_id", "reading_verdicts", ["result_id"])
    op.create_index("ix_reading_verdicts_user_id", "reading_verdicts", ["user_id"])
    op.create_index("ix_reading_verdicts_at", "reading_verdicts", ["at"])
    op.create_index("ix_reading_verdicts_fhir_sent_at", "reading_verdicts", ["fhir_sent_at"])


def downgrade() -> None:
    # The verdicts are the record of what readers decided: export them before going back.
    op.drop_table("reading_verdicts")
    op.drop_table("inference_findings")
    with op.batch_alter_table("inference_results", schema=None) as batch_op:
        batch_op.drop_index("ix_inference_results_sr_sop_instance_uid")
        batch_op.drop_column("sr_sop_instance_uid")
        batch_op.drop_column("sr_series_uid")
