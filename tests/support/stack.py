"""What the stack's tests ask of the process table: is a PID gone, which processes run from a
stack folder."""

from __future__ import annotations

from pathlib import Path

from neuronova.stack.processes import alive, proc_cmdline


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
