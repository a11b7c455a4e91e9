"""Inside a lab node (run by `ip netns exec`, which gives it a mount namespace of its own):
bind the node's mounts, become the service's user, and exec its command with its environment,
as a container runtime would. Its one argument is a JSON file written by tests/support/netns.py.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path


def _bind(source: str, target: str, read_only: bool) -> None:
    path = Path(target)
    if not path.exists():
        # Under the node's own /tmp or /run (already bound): made there, never on the host.
        if Path(source).is_dir():
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    subprocess.run(["mount", "--bind", source, target], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


def _stage(target: str) -> int:
    """The order of the binds: everything outside /run and /tmp first (a source may lie under
    /tmp: a checkout cloned there), then the node's own /run and what goes into it (secrets),
    then its own /tmp and what goes into that. A bind after /tmp is replaced could not reach a
    source under the host's /tmp any more."""
    path = Path(target)
    for stage, private in enumerate((Path("/run"), Path("/tmp")), start=1):
        if path == private:
            return 2 * stage - 1
        if private in path.parents:
            return 2 * stage
    return 0


def main() -> None:
    # As a container runtime: what it makes (/run/secrets …) is readable by the service's user,
    # whatever umask the caller had (the test session may run under 077).
    os.umask(0o022)
    spec = json.loads(Path(sys.argv[1]).read_text())
    for source, target, read_only in sorted(spec["mounts"], key=lambda m: _stage(m[1])):
        _bind(source, target, read_only)
    if spec["cwd"]:
        os.chdir(spec["cwd"])
    if spec["user"]:
        account = pwd.getpwnam(spec["user"])
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    main()
