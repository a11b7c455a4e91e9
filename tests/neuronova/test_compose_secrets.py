"""`neuronova secrets generate`: every secret docker-compose.yml names, written once, readable
by the containers' users and by nobody else on the host; and the image's entrypoint that turns
each VAR_FILE into VAR."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.settings import PROJECT_ROOT
from neuronova.cli import app
from neuronova.compose_secrets import SECRET_FILES, check_orthanc_users, generate_secrets
from tests.support.compose_file import raw_file

ENTRYPOINT = PROJECT_ROOT / "scripts" / "container-entrypoint"


def test_every_secret_the_compose_file_names_is_generated_once(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    result = CliRunner().invoke(app, ["secrets", "generate", "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    declared = {Path(s["file"]).name for s in raw_file()["secrets"].values()}
    assert {p.name for p in folder.iterdir()} == declared == {s.name for s in SECRET_FILES}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = {p.name: p.read_text() for p in folder.iterdir()}
    for name, value in values.items():
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
        assert len(value.strip()) >= 24, name
    assert len(set(values.values())) == len(values)  # no two alike
    users = json.loads(values["orthanc-users.json"])
    assert users == {"RegisteredUsers": {"neuronova": values["orthanc_password"].strip()}}
    # A second run keeps every one (a database was initialised with them).
    again = generate_secrets(folder)
    assert again.written == () and set(again.kept) == set(values)
    assert {p.name: p.read_text() for p in folder.iterdir()} == values
    assert "emr_client_secret" in result.output  # said to be the hospital's to replace


def test_an_orthanc_account_file_out_of_step_is_refused(tmp_path: Path) -> None:
    generate_secrets(tmp_path)
    (tmp_path / "orthanc_password").write_text("changed-by-hand-" * 2 + "\n")
    with pytest.raises(ValueError, match="does not hold orthanc_password"):
        check_orthanc_users(tmp_path)


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_entrypoint_reads_each_file_into_its_variable(tmp_path: Path) -> None:
    secret = tmp_path / "db"
    secret.write_text("p/@ss w:rd%\n")
    result = _entrypoint(
        {"NEURONOVA_DATABASE_PASSWORD_FILE": str(secret), "OTHER": "kept"},
        "sh",
        "-c",
        'printf "%s|%s|%s" "$NEURONOVA_DATABASE_PASSWORD" "${NEURONOVA_DATABASE_PASSWORD_FILE-unset}" "$OTHER"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "p/@ss w:rd%|unset|kept"


@pytest.mark.parametrize("content", [None, ""])
def test_the_entrypoint_stops_on_a_missing_or_empty_secret(
    tmp_path: Path, content: str | None
) -> None:
    secret = tmp_path / "db"
    if content is not None:
        secret.write_text(content)
    result = _entrypoint({"NEURONOVA_DATABASE_PASSWORD_FILE": str(secret)}, "true")
    assert result.returncode == 1
    assert "NEURONOVA_DATABASE_PASSWORD_FILE" in result.stderr and str(secret) in result.stderr
