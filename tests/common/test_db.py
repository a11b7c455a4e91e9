"""Migrations and the schema on both backends: SQLite (embedded) and the real MariaDB."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from common.db import Study, get_engine, migrate, session_scope

TABLES = {"studies", "series", "instances", "quarantine", "alembic_version"}


def test_sqlite_migrates_idempotently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'nn.db'}"
    migrate(url)
    migrate(url)
    assert TABLES <= set(inspect(get_engine(url)).get_table_names())


@pytest.mark.integration
def test_mariadb_schema_and_rollback(mariadb_url: str) -> None:
    assert TABLES <= set(inspect(get_engine(mariadb_url)).get_table_names())
    with pytest.raises(RuntimeError), session_scope(mariadb_url) as session:
        session.add(Study(study_instance_uid="1.2.3.999", patient_id="P"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(mariadb_url) as session:
        assert session.get(Study, "1.2.3.999") is None
