"""patients.display_name: the cached Patient's name as people write it, kept with the resource,
so the worklist searches a name (any order of its words) rather than the resource's JSON.
Filled here for the patients already cached. 2026-12-03."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

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
    return _display_name(patient)[:255] if isinstance(patient, dict) else ""


def _display_name(patient: dict[str, Any]) -> str:
    """tasks.patients.convert.display_name as it was on 2026-12-03, frozen here: a migration
    must fill the column the same way whatever that function becomes."""
    names = patient.get("name")
    if not isinstance(names, list) or not names or not isinstance(names[0], dict):
        return ""
    first = names[0]
    if isinstance(first.get("text"), str) and first["text"].strip():
        return str(first["text"]).strip()
    given = [g for g in first.get("given", []) if isinstance(g, str)]
    family = first.get("family")
    return " ".join([*given, family if isinstance(family, str) else ""]).strip()


def downgrade() -> None:
    op.drop_column("patients", "display_name")
