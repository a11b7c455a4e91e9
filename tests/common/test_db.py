"""Migrations and the schema on both backends: SQLite (embedded) and the real MariaDB."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlmodel import select

from common.db import Instance, Study, get_engine, migrate, session_scope
from tasks.archive.index import IndexEntry, index_instances

TABLES = {
    "studies",
    "series",
    "instances",
    "quarantine",
    "alembic_version",
    "inference_findings",
    "reading_verdicts",
}


def test_sqlite_migrates_idempotently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'nn.db'}"
    migrate(url)
    migrate(url)
    assert TABLES <= set(inspect(get_engine(url)).get_table_names())


def test_the_findings_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command

    from common.db import alembic_config

    url = f"sqlite:///{tmp_path / 'nn.db'}"
    migrate(url)
    command.downgrade(alembic_config(url), "0010")  # below 0011 and 0012
    assert not {"inference_findings", "reading_verdicts"} & set(
        inspect(get_engine(url)).get_table_names()
    )
    migrate(url)
    columns = {c["name"] for c in inspect(get_engine(url)).get_columns("inference_results")}
    assert {"sr_series_uid", "sr_sop_instance_uid"} <= columns


@pytest.mark.integration
def test_mariadb_schema_and_rollback(mariadb_url: str) -> None:
    assert TABLES <= set(inspect(get_engine(mariadb_url)).get_table_names())
    with pytest.raises(RuntimeError), session_scope(mariadb_url) as session:
        session.add(Study(study_instance_uid="1.2.3.999", patient_id="P"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(mariadb_url) as session:
        assert session.get(Study, "1.2.3.999") is None


def _entry(study: str, series: str, sop: str, modality: str) -> IndexEntry:
    return IndexEntry(
        patient_id="P1",
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid="1.2",
        modality=modality,
        series_number=1,
        study_date="20260101",
        accession_number=None,
        orthanc_id=f"o-{sop}",
        orthanc_series_id=f"o-{series}",
        orthanc_study_id=f"o-{study}",
        transfer_syntax="1.2.840.10008.1.2.4.201",
        source_transfer_syntax="1.2.840.10008.1.2.1",
        action="transcoded",
        reason=None,
        lossless=True,
        pixel_sha256="p",
        stored_sha256="s",
        bytes_in=10,
        bytes_stored=5,
    )


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_parallel_batches_of_one_study_index_cleanly(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Batches of one new study indexed at once must not race on the study row."""
    url = (
        f"sqlite:///{tmp_path / 'nn.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("mariadb_url")
    )
    migrate(url)
    study = f"1.2.840.99.{uuid.uuid4().int % 10**12}"
    modalities = ["CT", "MR", "SEG", "PR"]

    def index_batch(worker: int) -> None:
        entries = [
            _entry(study, f"{study}.{worker}", f"{study}.{worker}.{i}", modalities[worker])
            for i in range(20)
        ]
        with session_scope(url) as session:
            index_instances(session, entries)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(index_batch, range(4)))
    with ThreadPoolExecutor(max_workers=4) as pool:  # again: idempotent
        list(pool.map(index_batch, range(4)))

    with session_scope(url) as session:
        row = session.get(Study, study)
        count = len(
            session.exec(select(Instance).where(Instance.study_instance_uid == study)).all()
        )
    assert row is not None and row.modalities == "CT\\MR\\PR\\SEG"
    assert count == 80


def test_schema_head_constant_matches_the_migrations(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from common.db import SCHEMA_HEAD, alembic_config

    url = f"sqlite:///{tmp_path / 'nn.db'}"
    assert ScriptDirectory.from_config(alembic_config(url)).get_current_head() == SCHEMA_HEAD


def test_ensure_schema_creates_a_new_database_then_is_a_no_op(tmp_path: Path) -> None:
    from common.db import ensure_schema

    url = f"sqlite:///{tmp_path / 'new' / 'nn.db'}"
    ensure_schema(url)
    ensure_schema(url)
    assert TABLES <= set(inspect(get_engine(url)).get_table_names())


def test_0010_fills_the_display_name_of_the_patients_already_cached(tmp_path: Path) -> None:
    """Patients cached before the column existed get their name; one without a name or with a
    broken resource stays empty."""
    from alembic import command
    from sqlalchemy import text

    from common.db import CachedPatient, alembic_config

    url = f"sqlite:///{tmp_path / 'nn.db'}"
    command.upgrade(alembic_config(url), "0009")
    named = '{"resourceType":"Patient","name":[{"given":["Ada","M"],"family":"Lovelace"}]}'
    with get_engine(url).begin() as connection:
        for mrn, resource in (
            ("NN-1", named),
            ("NN-2", '{"resourceType":"Patient"}'),
            ("NN-3", "not json"),
        ):
            connection.execute(
                text(
                    "INSERT INTO patients (mrn, resource, source, fhir_pending, updated_at) "
                    "VALUES (:mrn, :resource, 'fhir', 0, '2026-12-03 00:00:00')"
                ),
                {"mrn": mrn, "resource": resource},
            )
    migrate(url)
    with session_scope(url) as session:
        names = {p.mrn: p.display_name for p in session.exec(select(CachedPatient))}
    assert names == {"NN-1": "Ada M Lovelace", "NN-2": None, "NN-3": None}
