"""`neuronova arrivals-health`, compose's health check of the arrival watcher: healthy while
its passes hand studies on, not merely while it runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from typer.testing import CliRunner

from neuronova.arrivals_watcher import write_heartbeat
from neuronova.cli import app


def _check(beat: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["arrivals-health", str(beat)])
    return result.exit_code, result.output


def test_a_pass_that_handed_studies_on_is_healthy(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    write_heartbeat(beat, None)
    assert _check(beat)[0] == 0


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
