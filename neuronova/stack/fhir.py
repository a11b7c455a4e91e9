"""The FHIR server (servers/fhir: @medplum/fhir-router on Node, in memory), for the local stack
and the tests; production runs HAPI FHIR."""

from __future__ import annotations

import shutil
import subprocess

from common.errors import StackError
from common.settings import PROJECT_ROOT
from neuronova.stack.component import Context, LoopbackHttp

FHIR_SERVER_DIR = PROJECT_ROOT / "servers" / "fhir"

# Healthy once it answers a search, not just when a port happens to be open.
SERVICE = LoopbackHttp("fhir", health_path="/Patient?_count=1")


def prepare(ctx: Context) -> None:
    """Install the server's npm packages from its lock file unless present."""
    if (FHIR_SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise StackError("npm not found: install Node.js 20 (Debian packages nodejs and npm)")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--silent"],
        cwd=FHIR_SERVER_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"npm ci in {FHIR_SERVER_DIR} failed: {result.stderr[-2000:]}")


def command(ctx: Context) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise StackError("node not found: install Node.js 20 (Debian package nodejs)")
    return [
        node,
        str(FHIR_SERVER_DIR / "server.mjs"),
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.settings.fhir_port),
    ]
