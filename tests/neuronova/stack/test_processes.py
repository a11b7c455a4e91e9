"""The process table: a child of ours is reaped, whenever it dies."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from neuronova.stack import processes
from tests.support.processes import reaped


def test_a_child_that_dies_between_reap_and_look_is_still_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race CI found: the child exits after `alive` polled it and before it read /proc,
    so it is seen as a zombie; `alive` must collect it then, not leave it in the table."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    monkeypatch.setitem(processes._CHILDREN, child.pid, child)
    deadline = time.monotonic() + 10
    while (processes.proc_stat(child.pid) or ["Z"])[0] != "Z":  # a zombie, not yet waited
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.02)
    real_reap = processes.reap
    calls: list[int] = []

    def reap_late(pid: int, timeout_s: float = 0.0) -> None:
        calls.append(pid)
        if len(calls) > 1:  # the first poll "comes too early", as in the race
            real_reap(pid, timeout_s)

    monkeypatch.setattr(processes, "reap", reap_late)
    assert processes.alive(child.pid) is False
    assert reaped(child.pid)
    assert child.returncode == 0
