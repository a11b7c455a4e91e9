"""The stack's processes as /proc sees them: identity (PID and start time), liveness, the
sessions they lead, and reaping the ones this Python process started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

# Popen objects of the processes this Python process started, so they can be reaped (a zombie
# would otherwise look alive to kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def adopt(process: subprocess.Popen[bytes]) -> None:
    """Keep the Popen of a process we started, to reap it and report its exit code."""
    _CHILDREN[process.pid] = process


def popen_of(pid: int) -> subprocess.Popen[bytes] | None:
    """The Popen of a process this Python process started, else None."""
    return _CHILDREN.get(pid)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3), or None when there is no such PID."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, possibly while we scanned /proc
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    end = raw.rfind(")")
    return raw[end + 2 :].split() if end >= 0 else None


def proc_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the PID, a unique identity."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def proc_cmdline(pid: int) -> list[str]:
    """The process's command line, one item per argument ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def reap(pid: int, timeout_s: float = 0.0) -> None:
    """Collect the exit status of a child of ours (Popen keeps it for the error message)."""
    child = _CHILDREN.get(pid)
    if child is None:
        return
    if timeout_s <= 0:
        child.poll()
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=timeout_s)


def alive(pid: int) -> bool:
    """Whether the PID runs (a zombie or a dead process does not)."""
    reap(pid)
    fields = proc_stat(pid)
    if fields is not None and fields[0] == "Z":
        # It may have died between the reap and the read: reap it now, or the zombie of our
        # own child stays in the process table for as long as this process lives.
        reap(pid)
        return False
    return fields is not None and fields[0] != "X"


def session_members(sid: int) -> set[int]:
    """Live processes of the session `sid` that our process leads, the leader included."""
    # The leader counts even if it left its session (setsid), so it is never orphaned.
    members = {sid} if alive(sid) else set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.add(int(entry.name))
    return members


def signal_session(sid: int, sig: signal.Signals) -> None:
    """Signal every live member of the session (the leader and whatever it forked)."""
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(sid: int, timeout_s: float) -> bool:
    """Wait until no member of the session lives; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while session_members(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
