"""The data folder (`var/` by default) is its owner's alone: 0700, and what is made in it 0600.

It holds password hashes, the patient cache, studies, quarantined files and logs. Every process
of ours that writes there (the CLI, the local stack and what it starts: gunicorn, the Prefect
workers, Orthanc, MariaDB, Redis, nginx) runs with umask 077, so new files are 0600 and new
folders 0700 whatever each program asks for. A folder left by an earlier version is tightened
once, when the stack starts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def use_private_umask() -> None:
    """From now on this process (and what it starts) makes files for its owner only."""
    os.umask(PRIVATE_UMASK)


def make_private(data_dir: Path) -> None:
    """Create `data_dir` 0700, or make an existing one so; when it was open to others, also take
    the group's and others' bits off everything inside (links are not followed)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(data_dir.stat().st_mode) & PRIVATE_UMASK:
        for folder, subfolders, files in os.walk(data_dir):
            for name in (*subfolders, *files):
                _tighten(Path(folder) / name)
    data_dir.chmod(0o700)


def _tighten(path: Path) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
        return
    if stat.S_IMODE(mode) & PRIVATE_UMASK:
        path.chmod(stat.S_IMODE(mode) & ~PRIVATE_UMASK)
