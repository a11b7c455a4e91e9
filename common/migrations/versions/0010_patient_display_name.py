"""patients.display_name: the cached Patient's name as people write it, kept with the resource,
so the worklist searches a name (any order of its words) rather than the resource's JSON.
Filled here for the patients already cached. 2026-12-03."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from tasks.patients.convert import display_name

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    op.add_column("patients", sa.Column("display_name", sa.String(length=255), nullable=True))
    patients = sa.table(
        "patients",
        sa.column("mrn", sa.String),
        sa.column("resource", sa.Text),
        sa.column("display_name", sa.String),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(patients.c.mrn, patients.c.resource)).all()
    named = [{"key": mrn, "name": name} for mrn, resource in rows if (name := _name_of(resource))]
    update = (
        patients.update()
        .where(patients.c.mrn == sa.bindparam("key"))
        .values(display_name=sa.bindparam("name"))
    )
    for start in range(0, len(named), _BATCH):
        connection.execute(update, named[start : start + _BATCH])


def _name_of(resource: str | None) -> str:
    try:
        patient = json.loads(resource or "")
    except ValueError:
        return ""
    return display_name(patient)[:255] if isinstance(patient, dict) else ""


def downgrade() -> None:
    op.drop_column("patients", "display_name")
