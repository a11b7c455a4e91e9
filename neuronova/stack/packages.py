"""The Debian packages the stack and its tools need: checked with dpkg, installed with apt-get."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from common.errors import StackError
from common.settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

# Debian packages that no component runs but the tests and benchmarks call: storescu and
# dciodvfy (ingest), Chromium (the viewer tests, driven by Playwright), wrk (the gate benchmark),
# docker-compose (its `config` checks the production compose file; no Docker engine runs here),
# openssl (a certificate for the production nginx config, started by its test); and what
# scripts/compose-check runs the production compose file with: iproute2 (network namespaces,
# bridges), PostgreSQL (the postgres images), Orthanc's PostgreSQL index plugin (the orthancteam
# image's). No service of these is started by installing them (see POLICY_RC_D).
TOOL_PACKAGES: tuple[str, ...] = (
    "dcmtk",
    "dicom3tools",
    "chromium",
    "wrk",
    "docker-compose",
    "openssl",
    "iproute2",
    "postgresql",
    "orthanc-postgresql",
)

# npm trees installed from their lock files with the packages, so that after `make system`
# (which `make demo` and `make test` both run) nothing needs the network again: the FHIR server,
# and the tests' axe-core (absent from the production image, which carries no tests).
NPM_FOLDERS: tuple[Path, ...] = (
    PROJECT_ROOT / "servers" / "fhir",
    PROJECT_ROOT / "tests" / "support" / "axe",
)

_APT_OUTPUT_LINES = 30  # of a failed apt-get, in the error

_apt_updated = False


def _dpkg_installed(package: str) -> bool:
    """Whether dpkg says the package is installed."""
    if shutil.which("dpkg-query") is None:
        raise StackError(f"dpkg-query not found: install {package} by hand (not a Debian system?)")
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "installed"


def _run_apt(args: Sequence[str]) -> None:
    """Run apt-get (through sudo when not root), failing with its output."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise StackError(f"apt-get {' '.join(args)} needs root, and sudo is not installed")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        [*prefix, "apt-get", *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-_APT_OUTPUT_LINES:])
        raise StackError(f"apt-get {' '.join(args)} failed ({result.returncode}):\n{tail}")


# While the stack installs packages, no service may start: installing orthanc, nginx,
# mariadb-server or redis-server would otherwise start Debian's own instance on the standard
# ports (Orthanc's, HTTP, MySQL's, Redis's), which the stack's own then find taken. invoke-rc.d and
# deb-systemd-invoke ask this script first; exit 101 means "not now". Services that were
# already running are left alone (nothing is stopped), and a policy the machine already has is
# kept as it is.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_DENY_STARTS = (
    "#!/bin/sh\n# Written by neuronova stack install while it installs packages.\nexit 101\n"
)


@contextlib.contextmanager
def services_kept_from_starting(policy: Path | None = None) -> Iterator[None]:
    """No package installed meanwhile starts its service (a policy already there is kept)."""
    policy = policy or POLICY_RC_D
    if policy.exists():
        yield
        return
    if os.geteuid() != 0:
        logger.warning("not root: %s not written; installed services may start", policy)
        yield
        return
    policy.write_text(_DENY_STARTS)
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def ensure_system_packages(packages: Sequence[str]) -> None:
    """Install the Debian packages that dpkg says are missing (apt-get update once a process)."""
    global _apt_updated
    missing = [p for p in dict.fromkeys(packages) if not _dpkg_installed(p)]
    if not missing:
        return
    logger.info("installing Debian packages: %s", ", ".join(missing))
    if not _apt_updated:
        _run_apt(["update"])
        _apt_updated = True
    with services_kept_from_starting():
        _run_apt(["install", "-y", "--no-install-recommends", *missing])
    still_missing = [p for p in missing if not _dpkg_installed(p)]
    if still_missing:
        raise StackError(f"apt-get could not install: {', '.join(still_missing)}")


def ensure_npm_folders(folders: Sequence[Path] = NPM_FOLDERS) -> list[Path]:
    """`npm ci` in each folder whose node_modules/ does not match its lock file; those done."""
    from neuronova.node import ensure_npm_packages

    return [f for f in folders if (f / "package-lock.json").is_file() and ensure_npm_packages(f)]
