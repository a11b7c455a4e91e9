"""The FHIR server (servers/fhir: @medplum/fhir-router on Node, in memory), for the local stack
and the tests; production runs HAPI FHIR."""

from __future__ import annotations

from common.settings import PROJECT_ROOT
from neuronova.node import ensure_npm_packages, node_executable
from neuronova.stack.component import Context, LoopbackHttp

FHIR_SERVER_DIR = PROJECT_ROOT / "servers" / "fhir"

# Healthy once it answers a search, not just when a port happens to be open.
SERVICE = LoopbackHttp("fhir", health_path="/Patient?_count=1")


def prepare(ctx: Context) -> None:
    """Install the server's npm packages from its lock file unless installed from it already
    (`neuronova stack install` does it beforehand)."""
    ensure_npm_packages(FHIR_SERVER_DIR)


def command(ctx: Context) -> list[str]:
    return [
        node_executable(),
        str(FHIR_SERVER_DIR / "server.mjs"),
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.settings.fhir_port),
    ]
