"""The arrival watcher's heartbeat as compose's health check reads it
(`python -m neuronova.heartbeat FILE MAX_AGE_S`): healthy while its passes hand studies on, not
merely while it runs; and cheap, since it runs every 30 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.settings import PROJECT_ROOT
from neuronova.arrivals_watcher import write_heartbeat


def _check(beat: Path, max_age_s: float = 120) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "neuronova.heartbeat", str(beat), str(max_age_s)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    return result.returncode, result.stdout


def test_a_pass_that_handed_studies_on_is_healthy(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    write_heartbeat(beat, None)
    assert _check(beat) == (0, "arrival watcher hands studies on\n")


def test_a_watcher_that_cannot_hand_on_is_unhealthy_with_the_reason(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    problem = "no deployment process_arrival/on-arrival: run `neuronova deploy`"
    write_heartbeat(beat, problem)
    code, output = _check(beat)
    assert code == 1 and "degraded" in output and "process_arrival/on-arrival" in output


def test_no_pass_or_an_old_one_is_unhealthy(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    code, output = _check(beat)
    assert code == 1 and "no pass finished yet" in output
    beat.write_text(json.dumps({"problem": None}))
    old = time.time() - 3600
    os.utime(beat, (old, old))
    code, output = _check(beat)
    assert code == 1 and "stuck" in output


def test_the_probe_imports_nothing_heavy() -> None:
    # Every 30 s in a container: the standard library only (no settings, SQLAlchemy, Prefect).
    probe = (
        "import sys, neuronova.heartbeat; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'common', 'sqlalchemy', 'prefect', 'pydantic', 'tasks', 'flows'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    assert loaded.stdout.strip() == "[]"
