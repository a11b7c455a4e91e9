"""Whether processes have left the process table: stricter than "not running", since a zombie
of ours still holds its PID until it is collected."""

from __future__ import annotations

import os


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
