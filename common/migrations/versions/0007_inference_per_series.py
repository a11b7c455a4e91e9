"""inference per series: the key becomes (study, series, model, version). 2026-12-03."""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every existing row already names the series it read (series_instance_uid was always
    # written), so the wider key holds for them as they are.
    with op.batch_alter_table("inference_results", schema=None) as batch_op:
        batch_op.drop_constraint("uq_inference_study_model", type_="unique")
        batch_op.create_unique_constraint(
            "uq_inference_series_model",
            ["study_instance_uid", "series_instance_uid", "model_name", "model_version"],
        )


def downgrade() -> None:
    # Refuses (a unique violation) where a study has readings of two series: keep them, or
    # delete the later ones knowingly, before going back.
    with op.batch_alter_table("inference_results", schema=None) as batch_op:
        batch_op.drop_constraint("uq_inference_series_model", type_="unique")
        batch_op.create_unique_constraint(
            "uq_inference_study_model", ["study_instance_uid", "model_name", "model_version"]
        )
