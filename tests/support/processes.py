"""What the tests ask of the process table: has a PID left it (not even a zombie holds it), is it
gone (a zombie counts as gone), which processes run from a stack folder."""

from __future__ import annotations

import os
from pathlib import Path

from neuronova.stack.processes import alive, proc_cmdline


def reaped(pid: int) -> bool:
    """No process, not even a zombie, holds the PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def group_reaped(pgid: int) -> bool:
    """No process of the group is left in the table."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def gone(pid: int) -> bool:
    """Whether the PID no longer runs (a zombie counts as gone)."""
    return not alive(pid)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (e.g. a stack folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and text in " ".join(proc_cmdline(int(entry.name))):
            if alive(int(entry.name)):
                found.append(int(entry.name))
    return found
