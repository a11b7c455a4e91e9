"""The FHIR server (servers/fhir: @medplum/fhir-router on Node, in memory), for the local stack
and the tests; production runs HAPI FHIR."""

from __future__ import annotations

import shutil
import subprocess

import httpx

from common.errors import StackError
from common.settings import PROJECT_ROOT, Settings
from neuronova.stack.component import Component, Context, Health, http_health

FHIR_SERVER_DIR = PROJECT_ROOT / "servers" / "fhir"


def _prepare_fhir(ctx: Context) -> None:
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


def _fhir_command(ctx: Context) -> list[str]:
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


def _fhir_url(settings: Settings) -> str:
    return settings.fhir_url.rstrip("/")


def _fhir_health(ctx: Context, client: httpx.Client) -> Health:
    """The server answers a search (not just a port that happens to be open)."""
    return http_health(client, f"{_fhir_url(ctx.settings)}/Patient?_count=1")


FHIR = Component(
    name="fhir",
    key="fhir",
    url=_fhir_url,
    command=_fhir_command,
    health=_fhir_health,
    ports=lambda s: [("127.0.0.1", s.fhir_port)],
    prepare=_prepare_fhir,
    # Indexing the FHIR definitions takes a few seconds on two cores.
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_FHIR_URL",
)
