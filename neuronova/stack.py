"""The local stack: install, start, check and stop Orthanc, a Prefect server and later components.

Everything lives under `settings.stack_dir`: one folder per component (config, data, log) and
`run/` (pidfiles, lock). Processes are started detached in their own session and stopped by the
PIDs recorded here, never by name, so that several stacks (the demo's, the tests') can run side
by side on other ports and folders.

Adding a component (nginx, webapp, FHIR, EMR) means registering one `Component`, not editing
the start/stop logic.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from common.errors import StackError
from common.settings import PROJECT_ROOT, Settings
from neuronova.prefect_env import prefect_results_dir

logger = logging.getLogger(__name__)

# Debian packages that no component runs but the tests and benchmarks call: storescu and
# dciodvfy (ingest), Chromium (the viewer tests, driven by Playwright), wrk (the gate benchmark),
# docker-compose (its `config` checks the production compose file; no Docker engine runs here).
TOOL_PACKAGES: tuple[str, ...] = ("dcmtk", "dicom3tools", "chromium", "wrk", "docker-compose")

DICOMWEB_PLUGIN_GLOBS: tuple[str, ...] = (
    "/usr/share/orthanc/plugins/*DicomWeb*.so*",
    "/usr/lib/orthanc/*DicomWeb*.so*",
    "/usr/lib/orthanc/plugins/*DicomWeb*.so*",
    "/usr/lib/*/orthanc/plugins/*DicomWeb*.so*",
    "/usr/local/share/orthanc/plugins/*DicomWeb*.so*",
)

# The AET that dcmtk's storescu uses unless told otherwise; the only modality allowed to store.
STORESCU_AET = "STORESCU"

_HEALTH_POLL_S = 0.25
_HEALTH_REQUEST_TIMEOUT_S = 2.0
_ALREADY_RUNNING_WAIT_S = 10.0
_STOP_TIMEOUT_S = 20.0
_KILL_TIMEOUT_S = 5.0
_LOCK_TIMEOUT_S = 300.0
_LOG_TAIL_LINES = 30
_LOG_ROTATE_BYTES = 5 * 1024 * 1024


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Context:
    """What a component needs to render its config and command line."""

    settings: Settings
    home: Path  # the component's own folder under stack_dir (absolute)


@dataclass(frozen=True)
class Health:
    """The answer of one health check."""

    ok: bool
    version: str | None = None
    error: str | None = None


def _no_preparation(ctx: Context) -> None:
    """Nothing to render."""


def _no_env(ctx: Context) -> dict[str, str]:
    """No extra environment."""
    return {}


@dataclass(frozen=True)
class Component:
    """One process of the stack: how to configure, start and check it."""

    name: str
    key: str  # its key in `status()`, e.g. "orthanc", "prefect", "gateway"
    url: Callable[[Settings], str]  # the value of that key: the URL clients use
    command: Callable[[Context], list[str]]
    health: Callable[[Context, httpx.Client], Health]
    ports: Callable[[Settings], Sequence[tuple[str, int]]]  # (address, port) it binds
    prepare: Callable[[Context], None] = _no_preparation
    env: Callable[[Context], dict[str, str]] = _no_env
    packages: tuple[str, ...] = ()
    # What `status()` shows under `key` when more than a URL (e.g. the EMR's demo account).
    status_value: Callable[[Context], Any] | None = None
    start_timeout_s: float = 30.0
    # Sent in turn, each followed by a share of the stop timeout, before SIGKILL (to the whole
    # session). To the session too, unless the leader forwards them itself (`signal_leader`).
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)
    signal_leader: bool = False
    stop_timeout_s: float = _STOP_TIMEOUT_S
    port_hint: str = ""  # how to move it to other ports, for the "port in use" message


COMPONENTS: dict[str, Component] = {}


def register(component: Component) -> Component:
    """Add a component to the default registry (order of registration is start order)."""
    COMPONENTS[component.name] = component
    return component


# --------------------------------------------------------------------------- orthanc


def find_dicomweb_plugin(patterns: Sequence[str] = DICOMWEB_PLUGIN_GLOBS) -> Path | None:
    """The DICOMweb plugin's shared object, wherever this distribution puts it."""
    for pattern in patterns:
        # Prefer the unversioned name (a symlink on Debian) over libX.so.1.7.
        matches = sorted(glob.glob(pattern), key=lambda p: (not p.endswith(".so"), p))
        if matches:
            return Path(matches[0])
    return None


def find_orthanc_binary() -> Path | None:
    """The Orthanc executable; Debian puts it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("Orthanc") or shutil.which(
        "Orthanc", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"
    )
    return Path(found) if found else None


def render_orthanc_config(settings: Settings, home: Path, plugin: Path) -> dict[str, Any]:
    """Orthanc's configuration for the local stack: loopback-only HTTP, DICOMweb on."""
    db = home / "db"
    return {
        "Name": "NeuroNova",
        "StorageDirectory": str(db),
        "IndexDirectory": str(db),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": settings.orthanc_http_port,
        "HttpThreadsCount": 50,
        "KeepAlive": True,
        # Orthanc has no bind-address option: it listens on every interface. With remote access
        # off it answers HTTP only to loopback clients, and with authentication off that is the
        # only thing keeping other hosts out of the PACS. Never turn this on without users.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": settings.orthanc_aet,
        "DicomPort": settings.orthanc_dicom_port,
        # The DICOM port is open on every interface too, so stores are not allowed from anyone:
        # only the modality below (storescu's default AET, from this host) may push.
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"storescu": [STORESCU_AET, "127.0.0.1", 11112]},
        # Ingest must never overwrite an instance silently: a second payload under the same
        # SOPInstanceUID is kept out and reported by the ingest flow.
        "OverwriteInstances": False,
        "ConcurrentJobs": 2,
        # No IngestTranscoding: with the HTJ2K UID it stops Orthanc 1.10.1 from starting.
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
        },
    }


def _orthanc_config_path(ctx: Context) -> Path:
    return ctx.home / "orthanc.json"


def _prepare_orthanc(ctx: Context) -> None:
    """Write orthanc.json and create the storage folder."""
    plugin = find_dicomweb_plugin()
    if plugin is None:
        raise StackError(
            "the Orthanc DICOMweb plugin was not found in "
            f"{', '.join(DICOMWEB_PLUGIN_GLOBS)}: install the Debian package orthanc-dicomweb"
        )
    (ctx.home / "db").mkdir(parents=True, exist_ok=True)
    config = render_orthanc_config(ctx.settings, ctx.home, plugin)
    _write_atomically(_orthanc_config_path(ctx), json.dumps(config, indent=2) + "\n")


def _orthanc_command(ctx: Context) -> list[str]:
    binary = find_orthanc_binary()
    if binary is None:
        raise StackError("the Orthanc executable was not found: install the Debian package orthanc")
    return [str(binary), str(_orthanc_config_path(ctx))]


def _orthanc_url(settings: Settings) -> str:
    return settings.orthanc_url.rstrip("/")


def _orthanc_health(ctx: Context, client: httpx.Client) -> Health:
    """Orthanc answers /system, and it is ours (same AET and DICOM port), not another one."""
    try:
        response = client.get(f"{_orthanc_url(ctx.settings)}/system")
        if response.status_code != 200:
            return Health(False, error=f"GET /system answered HTTP {response.status_code}")
        body = response.json()
    except (httpx.HTTPError, ValueError) as err:
        return Health(False, error=f"{type(err).__name__}: {err}")
    if (body.get("DicomAet"), body.get("DicomPort")) != (
        ctx.settings.orthanc_aet,
        ctx.settings.orthanc_dicom_port,
    ):
        return Health(
            False,
            error=f"another Orthanc answers ({body.get('DicomAet')} on {body.get('DicomPort')})",
        )
    return Health(True, version=body.get("Version"))


def _orthanc_ports(settings: Settings) -> list[tuple[str, int]]:
    # Orthanc binds every interface, so that is where a conflict shows.
    return [("0.0.0.0", settings.orthanc_http_port), ("0.0.0.0", settings.orthanc_dicom_port)]  # noqa: S104


ORTHANC = register(
    Component(
        name="orthanc",
        key="orthanc",
        url=_orthanc_url,
        command=_orthanc_command,
        health=_orthanc_health,
        ports=_orthanc_ports,
        prepare=_prepare_orthanc,
        packages=("orthanc", "orthanc-dicomweb"),
        start_timeout_s=30.0,
        port_hint=(
            "a system Orthanc from the Debian package uses 8042/4242 when its service runs; "
            "choose other ports with NEURONOVA_ORTHANC_URL and NEURONOVA_ORTHANC_DICOM_PORT"
        ),
    )
)


# --------------------------------------------------------------------------- prefect


def find_prefect_executable() -> Path:
    """The `prefect` script of the environment this Python runs in."""
    candidate = Path(sys.executable).parent / "prefect"
    if not candidate.exists():
        raise StackError(f"{candidate} not found: is prefect installed in this environment?")
    return candidate


def _prefect_url(settings: Settings) -> str:
    return settings.prefect_api_url.rstrip("/")


def prefect_env(ctx: Context) -> dict[str, str]:
    """The Prefect server's settings: its own home and SQLite database, no analytics."""
    api_url = _prefect_url(ctx.settings)
    return {
        "PREFECT_HOME": str(ctx.home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{ctx.home / 'prefect.db'}",
        # No network here, and no reason to report usage from a hospital.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(ctx.settings.prefect_port),
        "PREFECT_API_URL": api_url,
        # The UI is for admins, behind the gateway (webapp/admin_ui.py): served under
        # /prefect, its API calls go through the gateway too.
        "PREFECT_UI_SERVE_BASE": "/prefect",
        "PREFECT_UI_API_URL": f"{ctx.settings.gateway_url.rstrip('/')}/prefect/api",
    }


def _prefect_command(ctx: Context) -> list[str]:
    return [
        str(find_prefect_executable()),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.settings.prefect_port),
    ]


def _prepare_prefect(ctx: Context) -> None:
    ctx.home.mkdir(parents=True, exist_ok=True)


def _prefect_health(ctx: Context, client: httpx.Client) -> Health:
    """The API's /health answers true; the version comes from /admin/version."""
    api = _prefect_url(ctx.settings)
    try:
        response = client.get(f"{api}/health")
        if response.status_code != 200 or response.json() is not True:
            return Health(False, error=f"GET /health answered HTTP {response.status_code}")
        version = client.get(f"{api}/admin/version")
        return Health(True, version=version.json() if version.status_code == 200 else None)
    except (httpx.HTTPError, ValueError) as err:
        return Health(False, error=f"{type(err).__name__}: {err}")


def _prefect_ports(settings: Settings) -> list[tuple[str, int]]:
    return [("127.0.0.1", settings.prefect_port)]


PREFECT = register(
    Component(
        name="prefect",
        key="prefect",
        url=_prefect_url,
        command=_prefect_command,
        health=_prefect_health,
        ports=_prefect_ports,
        prepare=_prepare_prefect,
        env=prefect_env,
        # SQLite migrations and the UI build take 10–20 s on two cores.
        start_timeout_s=90.0,
        port_hint="choose another port with NEURONOVA_PREFECT_API_URL",
    )
)


# --------------------------------------------------------------------------- webapp


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as NEURONOVA_* variables, so a child process builds the same Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list | dict):
            value = json.dumps(value)
        env[f"NEURONOVA_{name.upper()}"] = str(value)
    return env


def _venv_script(name: str) -> Path:
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise StackError(f"{candidate} not found: run `make setup`")
    return candidate


def _webapp_url(settings: Settings) -> str:
    return settings.webapp_url.rstrip("/")


def _webapp_command(ctx: Context) -> list[str]:
    s = ctx.settings
    return _gunicorn_command(s.webapp_port, s.webapp_workers, s.webapp_threads)


def _gunicorn_command(port: int, workers: int, threads: int) -> list[str]:
    return [
        str(_venv_script("gunicorn")),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        # Threads keep connections from nginx alive between requests (sync workers cannot).
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--keep-alive",
        "75",
        "--graceful-timeout",
        "10",
        "--chdir",
        str(PROJECT_ROOT),
        "--no-control-socket",
        # nginx accepts header lines up to 16 KB; let the gate answer those (an oversized
        # token is its 401) rather than gunicorn's 431 at 8 KB.
        "--limit-request-field_size",
        "16384",
        "--error-logfile",
        "-",
        "webapp.wsgi:app",
    ]


def _webapp_env(ctx: Context) -> dict[str, str]:
    # The signing secret is created once here so that every worker reads the same one.
    ctx.settings.jwt_secret_bytes()
    return settings_env(ctx.settings)


def _webapp_health(ctx: Context, client: httpx.Client) -> Health:
    return _http_health(client, f"{_webapp_url(ctx.settings)}/api/health")


def _http_health(client: httpx.Client, url: str) -> Health:
    try:
        response = client.get(url)
    except httpx.HTTPError as err:
        return Health(False, error=f"{type(err).__name__}: {err}")
    if response.status_code != 200:
        return Health(False, error=f"GET {url} answered HTTP {response.status_code}")
    return Health(True)


WEBAPP = register(
    Component(
        name="webapp",
        key="webapp",
        url=_webapp_url,
        command=_webapp_command,
        health=_webapp_health,
        ports=lambda s: [("127.0.0.1", s.webapp_port)],
        env=_webapp_env,
        start_timeout_s=60.0,
        port_hint="choose another port with NEURONOVA_WEBAPP_URL",
    )
)


# --------------------------------------------------------------------------- alerts pool

# The same app as the webapp, in its own gunicorn: each open alert stream holds a thread for as
# long as the browser listens, and those threads must never be the ones the gate needs.


def _alerts_url(settings: Settings) -> str:
    return settings.alerts_url.rstrip("/")


def _alerts_command(ctx: Context) -> list[str]:
    return _gunicorn_command(ctx.settings.alerts_port, 1, ctx.settings.alerts_threads)


def _alerts_health(ctx: Context, client: httpx.Client) -> Health:
    return _http_health(client, f"{_alerts_url(ctx.settings)}/api/health")


ALERTS = register(
    Component(
        name="alerts",
        key="alerts",
        url=_alerts_url,
        command=_alerts_command,
        health=_alerts_health,
        ports=lambda s: [("127.0.0.1", s.alerts_port)],
        env=_webapp_env,
        start_timeout_s=60.0,
        port_hint="choose another port with NEURONOVA_ALERTS_URL",
    )
)


# --------------------------------------------------------------------------- nginx (gateway)

NGINX_DIR = PROJECT_ROOT / "nginx"


def find_nginx_binary() -> Path | None:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def render_nginx_config(settings: Settings, home: Path, ohif_root: Path) -> str:
    """The local template with this stack's ports and folders filled in."""
    values = {
        "@HOME@": str(home),
        "@GATEWAY_PORT@": str(settings.gateway_port),
        "@WEBAPP@": f"127.0.0.1:{settings.webapp_port}",
        "@ALERTS@": f"127.0.0.1:{settings.alerts_port}",
        "@ORTHANC@": f"127.0.0.1:{settings.orthanc_http_port}",
        "@PREFECT@": f"127.0.0.1:{settings.prefect_port}",
        "@OHIF_ROOT@": str(ohif_root),
    }
    text = (NGINX_DIR / "local.conf.template").read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    if "@" in "".join(line.split("#")[0] for line in text.splitlines()):
        raise StackError("nginx/local.conf.template has a placeholder the stack does not fill")
    return text


def _prepare_nginx(ctx: Context) -> None:
    from neuronova.ohif import ensure_ohif

    root = ensure_ohif()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (ctx.home / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    snippets = ctx.home / "snippets"
    if snippets.exists():
        shutil.rmtree(snippets)
    shutil.copytree(NGINX_DIR / "snippets", snippets)
    _write_atomically(ctx.home / "nginx.conf", render_nginx_config(ctx.settings, ctx.home, root))
    binary = find_nginx_binary()
    if binary is None:
        raise StackError("nginx not found: install the Debian package nginx")
    check = subprocess.run(
        [str(binary), *_nginx_args(ctx), "-t", "-q"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise StackError(f"nginx -t refused {ctx.home / 'nginx.conf'}:\n{check.stderr[-2000:]}")


def _nginx_args(ctx: Context) -> list[str]:
    return [
        "-p",
        str(ctx.home),
        "-c",
        str(ctx.home / "nginx.conf"),
        "-e",
        str(ctx.home / "error.log"),
    ]


def _nginx_command(ctx: Context) -> list[str]:
    binary = find_nginx_binary()
    if binary is None:
        raise StackError("nginx not found: install the Debian package nginx")
    return [str(binary), *_nginx_args(ctx), "-g", "daemon off;"]


def _gateway_url(settings: Settings) -> str:
    return settings.gateway_url.rstrip("/")


def _nginx_health(ctx: Context, client: httpx.Client) -> Health:
    """nginx answers itself, and reaches the webapp through /api."""
    base = _gateway_url(ctx.settings)
    own = _http_health(client, f"{base}/healthz")
    return own if not own.ok else _http_health(client, f"{base}/api/health")


NGINX = register(
    Component(
        name="nginx",
        key="gateway",
        url=_gateway_url,
        command=_nginx_command,
        health=_nginx_health,
        ports=lambda s: [("127.0.0.1", s.gateway_port)],
        prepare=_prepare_nginx,
        packages=("nginx",),
        # The first start downloads OHIF (about 50 MB).
        start_timeout_s=60.0,
        port_hint="choose another port with NEURONOVA_GATEWAY_URL",
    )
)


# --------------------------------------------------------------------------- FHIR server

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
    return _http_health(client, f"{_fhir_url(ctx.settings)}/Patient?_count=1")


FHIR = register(
    Component(
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
)


# --------------------------------------------------------------------------- EMR (emulator)


def _emr_command(ctx: Context) -> list[str]:
    return [
        sys.executable,
        "-m",
        "neuronova.emr_emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.settings.emr_port),
        "--credentials",
        str(ctx.home / "credentials.json"),
        "--patients",
        str(ctx.settings.emr_demo_patients),
    ]


def _prepare_emr(ctx: Context) -> None:
    credentials = ctx.settings.emr_credentials()
    path = ctx.home / "credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(credentials, handle)


def _emr_url(settings: Settings) -> str:
    return settings.emr_url.rstrip("/")


def _emr_status(ctx: Context) -> dict[str, str]:
    return {"url": _emr_url(ctx.settings), **ctx.settings.emr_credentials()}


EMR = register(
    Component(
        name="emr",
        key="emr",
        url=_emr_url,
        command=_emr_command,
        health=lambda ctx, client: _http_health(client, f"{_emr_url(ctx.settings)}/healthz"),
        ports=lambda s: [("127.0.0.1", s.emr_port)],
        prepare=_prepare_emr,
        status_value=_emr_status,
        port_hint="choose another port with NEURONOVA_EMR_URL",
    )
)


# --------------------------------------------------------------------------- Prefect workers

# One process worker per work pool, as in production (compose services worker-cpu and
# worker-gpu): `cpu` runs ingest, checks and patient syncs; `gpu` runs inference, one at a time
# per GPU (the pool's limit), on the CPU where there is none. They load the flows from this
# checkout (the deployments' pull step), so `make deploy` must have registered them; the demo
# does. Each answers /health on loopback (Prefect's worker webserver).

WORKER_POOLS: tuple[str, ...] = ("cpu", "gpu")
# JSON lines with flow_run_id / study_uid, for the worker and every run it starts.
WORKER_LOGGING_CONFIG = PROJECT_ROOT / "deployments" / "logging.yml"


def worker_name(pool: str) -> str:
    """The name the pool's worker registers under (several stacks have several servers)."""
    return f"neuronova-{pool}@{socket.gethostname()}"


def worker_health_port(settings: Settings, pool: str) -> int:
    return settings.worker_health_port + WORKER_POOLS.index(pool)


def _worker_health_url(settings: Settings, pool: str) -> str:
    return f"http://127.0.0.1:{worker_health_port(settings, pool)}/health"


def _worker_command(pool: str) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        return [
            str(find_prefect_executable()),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",  # deployments.work_pools.POOL_TYPE (not imported: it pulls in Prefect)
            "--name",
            worker_name(pool),
            "--with-healthcheck",
            "--limit",
            str(ctx.settings.worker_limit),
        ]

    return command


def _worker_env(pool: str) -> Callable[[Context], dict[str, str]]:
    def env(ctx: Context) -> dict[str, str]:
        s = ctx.settings
        logging_config = (
            {"PREFECT_LOGGING_SETTINGS_PATH": str(WORKER_LOGGING_CONFIG)}
            if s.log_format == "json"
            else {}
        )
        return (
            settings_env(s)
            | logging_config
            | {
                "PREFECT_HOME": str(ctx.home),
                "PREFECT_API_URL": _prefect_url(s),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # Poll every 2 s: a triggered run starts sooner, for one cheap request.
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
                "PREFECT_WORKER_WEBSERVER_PORT": str(worker_health_port(s, pool)),
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_results_dir(s)),
                # Runs on these workers hand studies on through the deployments, so inference
                # lands on the gpu pool.
                "NEURONOVA_HANDOFF": "deployment",
            }
        )

    return env


def _prepare_worker(ctx: Context) -> None:
    """The pools exist with their limits before a worker polls them (`make deploy` does the
    same); the worker's own `--type` would create one without the gpu pool's limit."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.work_pools import ensure_work_pools

    prefect_results_dir(ctx.settings).mkdir(parents=True, exist_ok=True)
    with temporary_settings({PREFECT_API_URL: _prefect_url(ctx.settings)}):
        ensure_work_pools(ctx.settings)


def _worker_health(pool: str) -> Callable[[Context, httpx.Client], Health]:
    """The worker's /health answers OK and the Prefect server lists it as ONLINE in its pool."""

    def health(ctx: Context, client: httpx.Client) -> Health:
        own = _http_health(client, _worker_health_url(ctx.settings, pool))
        if not own.ok:
            return own
        try:
            response = client.post(f"{_prefect_url(ctx.settings)}/work_pools/{pool}/workers/filter")
            workers = {w["name"]: w for w in response.json()} if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as err:
            return Health(False, error=f"Prefect server: {type(err).__name__}: {err}")
        mine = workers.get(worker_name(pool))
        if mine is None or mine.get("status") != "ONLINE":
            return Health(False, error=f"not ONLINE in work pool {pool} yet")
        return Health(True)

    return health


for _pool in WORKER_POOLS:
    register(
        Component(
            name=f"worker-{_pool}",
            key=f"worker_{_pool}",
            url=lambda s, pool=_pool: _worker_health_url(s, pool),  # type: ignore[misc]
            command=_worker_command(_pool),
            health=_worker_health(_pool),
            ports=lambda s, pool=_pool: [("127.0.0.1", worker_health_port(s, pool))],  # type: ignore[misc]
            prepare=_prepare_worker,
            env=_worker_env(_pool),
            # `prefect worker start` forwards a SIGINT to its worker ("finish up and stop") and
            # turns a second one into SIGKILL of it. The graceful stop sometimes never ends
            # (seen under CI), hence the second SIGINT, then SIGTERM, then SIGKILL.
            stop_signals=(signal.SIGINT, signal.SIGINT, signal.SIGTERM),
            signal_leader=True,
            stop_timeout_s=45.0,
            start_timeout_s=90.0,
            port_hint="choose other ports with NEURONOVA_WORKER_HEALTH_PORT",
        )
    )


# --------------------------------------------------------------------------- system packages

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
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise StackError(f"apt-get {' '.join(args)} failed ({result.returncode}):\n{tail}")


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
    _run_apt(["install", "-y", "--no-install-recommends", *missing])
    still_missing = [p for p in missing if not _dpkg_installed(p)]
    if still_missing:
        raise StackError(f"apt-get could not install: {', '.join(still_missing)}")


# --------------------------------------------------------------------------- processes

# Popen objects of the processes this Python process started, so they can be reaped (a zombie
# would otherwise look alive to kill(pid, 0)).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3), or None when there is no such PID."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, possibly while we scanned /proc
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    end = raw.rfind(")")
    return raw[end + 2 :].split() if end >= 0 else None


def _proc_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the PID, a unique identity."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reap(pid: int, timeout_s: float = 0.0) -> None:
    """Collect the exit status of a child of ours (Popen keeps it for the error message)."""
    child = _CHILDREN.get(pid)
    if child is None:
        return
    if timeout_s <= 0:
        child.poll()
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=timeout_s)


def _alive(pid: int) -> bool:
    """Whether the PID runs (a zombie or a dead process does not)."""
    _reap(pid)
    fields = _proc_stat(pid)
    if fields is not None and fields[0] == "Z":
        # It may have died between the reap and the read: reap it now, or the zombie of our
        # own child stays in the process table for as long as this process lives.
        _reap(pid)
        return False
    return fields is not None and fields[0] != "X"


def _session_members(sid: int) -> set[int]:
    """Live processes of the session `sid` that our process leads, the leader included."""
    # The leader counts even if it left its session (setsid), so it is never orphaned.
    members = {sid} if _alive(sid) else set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.add(int(entry.name))
    return members


def _signal_session(sid: int, sig: signal.Signals) -> None:
    """Signal every live member of the session (the leader and whatever it forked)."""
    for pid in _session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(sid: int, timeout_s: float) -> bool:
    """Wait until no member of the session lives; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while _session_members(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _port_free(address: str, port: int) -> bool:
    """Whether a server could bind (address, port) now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Servers set SO_REUSEADDR, so sockets in TIME_WAIT from a previous run do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: held together while picked, so none repeats."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_consecutive_ports(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive free loopback ports (the workers' health ports)."""
    for _ in range(attempts):
        (first,) = free_ports(1)
        if all(_port_free("127.0.0.1", first + n) for n in range(count)):
            return first
    raise StackError(f"found no {count} consecutive free loopback ports")


def settings_on_free_ports(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a stack of its own (tests, benchmarks): its folder, free loopback ports."""
    orthanc_http, orthanc_dicom, prefect, gateway, webapp, fhir, emr, alerts = free_ports(8)
    values: dict[str, Any] = {
        "environment": "test",
        "data_dir": data_dir,
        "orthanc_url": f"http://127.0.0.1:{orthanc_http}",
        "orthanc_dicom_port": orthanc_dicom,
        "prefect_api_url": f"http://127.0.0.1:{prefect}/api",
        "gateway_url": f"http://127.0.0.1:{gateway}",
        "webapp_url": f"http://127.0.0.1:{webapp}",
        "fhir_url": f"http://127.0.0.1:{fhir}/fhir/R4",
        "emr_url": f"http://127.0.0.1:{emr}",
        "alerts_url": f"http://127.0.0.1:{alerts}",
        "worker_health_port": free_consecutive_ports(len(WORKER_POOLS)),
    }
    return Settings(**{**values, **overrides})


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log written since `offset`."""
    try:
        with path.open("rb") as log:
            log.seek(max(offset, log.seek(0, os.SEEK_END) - 16384))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


@dataclass(frozen=True)
class _Pidfile:
    pid: int
    start_ticks: int


# --------------------------------------------------------------------------- the stack


@dataclass
class LocalStack:
    """The local stack under `settings.stack_dir`, made of the components of `registry`."""

    settings: Settings
    registry: Mapping[str, Component] = field(default_factory=lambda: dict(COMPONENTS))

    @property
    def root(self) -> Path:
        return self.settings.stack_dir.resolve()

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def context(self, component: Component) -> Context:
        return Context(settings=self.settings, home=self.root / component.name)

    def log_path(self, component: Component) -> Path:
        return self.root / component.name / f"{component.name}.log"

    def pidfile_path(self, component: Component) -> Path:
        return self.run_dir / f"{component.name}.pid"

    def packages(self, names: Sequence[str] | None = None) -> list[str]:
        """Debian packages the selected components and the tools need."""
        selected = [self.registry[n] for n in self._select(names)]
        return [*(p for c in selected for p in c.packages), *TOOL_PACKAGES]

    # ---- public operations

    def up(self, components: Sequence[str] | None = None) -> dict[str, Any]:
        """Install what is missing, start the components not running, wait until they answer."""
        names = self._select(components)
        ensure_system_packages(self.packages(names))
        with self._lock():
            started: list[Component] = []
            try:
                for name in names:
                    component = self.registry[name]
                    if self._start_if_needed(component):
                        started.append(component)
            except BaseException:
                # Leave nothing half-started behind; what ran before this call stays.
                for component in reversed(started):
                    self._stop(component)
                raise
        return self.status()

    def down(self, components: Sequence[str] | None = None) -> None:
        """Stop the components (all by default) by their recorded PIDs, in reverse start order."""
        names = self._select(components)
        with self._lock():
            for name in reversed(names):
                self._stop(self.registry[name])

    def status(self) -> dict[str, Any]:
        """One JSON-ready object: `up`, each component's URL under its key, and details."""
        details: dict[str, dict[str, Any]] = {}
        with httpx.Client(timeout=_HEALTH_REQUEST_TIMEOUT_S) as client:
            for component in self.registry.values():
                pid = self.running_pid(component)
                health = (
                    component.health(self.context(component), client)
                    if pid is not None
                    else Health(False, error="not running")
                )
                details[component.name] = {
                    "running": pid is not None,
                    "pid": pid,
                    "healthy": health.ok,
                    "url": component.url(self.settings),
                    "version": health.version,
                    "error": health.error,
                    "log": str(self.log_path(component)),
                }
        result: dict[str, Any] = {"up": all(d["healthy"] for d in details.values())}
        for component in self.registry.values():
            result[component.key] = (
                component.status_value(self.context(component))
                if component.status_value is not None
                else component.url(self.settings)
            )
        result["stack_dir"] = str(self.root)
        result["components"] = details
        return result

    def running_pid(self, component: Component) -> int | None:
        """The PID of the component's own process, or None (a stale pidfile is ignored)."""
        record = self._read_pidfile(component)
        if record is None or not self._is_ours(component, record):
            return None
        return record.pid

    # ---- internals

    def _select(self, names: Sequence[str] | None) -> list[str]:
        if not names:
            return list(self.registry)
        unknown = [n for n in names if n not in self.registry]
        if unknown:
            raise StackError(
                f"unknown component(s) {', '.join(unknown)}; known: {', '.join(self.registry)}"
            )
        # Keep registration order: it is the start order.
        return [n for n in self.registry if n in names]

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down on one stack folder (two shells, or a test and a shell)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "stack.lock").open("w") as handle:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"another stack command holds {self.run_dir / 'stack.lock'}"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_pidfile(self, component: Component) -> _Pidfile | None:
        try:
            lines = self.pidfile_path(component).read_text().split()
            return _Pidfile(pid=int(lines[0]), start_ticks=int(lines[1]))
        except FileNotFoundError:
            return None
        except (IndexError, ValueError):
            logger.warning("unreadable pidfile %s", self.pidfile_path(component))
            return _Pidfile(pid=0, start_ticks=0)

    def _is_ours(self, component: Component, record: _Pidfile) -> bool:
        """The recorded process still runs and is the one we started (not a reused PID)."""
        if record.pid <= 0 or not _alive(record.pid):
            return False
        if _proc_start_ticks(record.pid) != record.start_ticks:
            return False
        # Belt and braces: its command line names the component's executable. (A script's
        # interpreter comes first in cmdline, so look for the executable anywhere in it.)
        try:
            executable = self._command(component)[0]
        except StackError:
            return True
        # nginx rewrites its title into one string ("nginx: master process /usr/sbin/nginx …").
        return any(executable in part for part in _proc_cmdline(record.pid))

    def _command(self, component: Component) -> list[str]:
        return component.command(self.context(component))

    def _clean_stale_pidfile(self, component: Component) -> None:
        path = self.pidfile_path(component)
        record = self._read_pidfile(component)
        if record is not None and not self._is_ours(component, record):
            logger.info("%s: removing stale pidfile %s (pid %s)", component.name, path, record.pid)
            path.unlink(missing_ok=True)

    def _start_if_needed(self, component: Component) -> bool:
        """Start the component unless it runs; True when this call started it."""
        self._clean_stale_pidfile(component)
        pid = self.running_pid(component)
        if pid is not None:
            logger.info("%s already running (pid %d)", component.name, pid)
            self._wait_healthy(
                component,
                pid,
                min(_ALREADY_RUNNING_WAIT_S, component.start_timeout_s),
                log_offset=None,
            )
            return False
        busy = [f"{a}:{p}" for a, p in component.ports(self.settings) if not _port_free(a, p)]
        if busy:
            hint = f" ({component.port_hint})" if component.port_hint else ""
            raise StackError(
                f"cannot start {component.name}: port {', '.join(busy)} already in use{hint}"
            )
        ctx = self.context(component)
        ctx.home.mkdir(parents=True, exist_ok=True)
        component.prepare(ctx)
        pid, offset = self._spawn(component, ctx)
        try:
            self._wait_healthy(component, pid, component.start_timeout_s, log_offset=offset)
        except BaseException:
            self._stop(component)
            raise
        return True

    def _spawn(self, component: Component, ctx: Context) -> tuple[int, int]:
        """Start the process detached, in its own session, its output appended to its log."""
        argv = self._command(component)
        log_path = self.log_path(component)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if log_path.exists() and log_path.stat().st_size > _LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))
        # Inherited PREFECT_* (a test harness, a profile) must not reconfigure a server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(component.env(ctx))
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} starting: {' '.join(argv)}\n".encode())
            log.flush()
            offset = log.tell()
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=ctx.home,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                raise StackError(f"cannot start {component.name} ({argv[0]}): {err}") from err
        _CHILDREN[process.pid] = process
        start_ticks = _proc_start_ticks(process.pid)
        _write_atomically(self.pidfile_path(component), f"{process.pid}\n{start_ticks or 0}\n")
        logger.info("%s started (pid %d), log %s", component.name, process.pid, log_path)
        return process.pid, offset

    def _wait_healthy(
        self, component: Component, pid: int, timeout_s: float, log_offset: int | None
    ) -> None:
        """Poll the health check until it passes; fail fast when the process dies."""
        ctx = self.context(component)
        deadline = time.monotonic() + timeout_s
        health = Health(False, error="not checked yet")
        with httpx.Client(timeout=_HEALTH_REQUEST_TIMEOUT_S) as client:
            while True:
                if not _alive(pid):
                    child = _CHILDREN.get(pid)
                    code = f" with code {child.returncode}" if child is not None else ""
                    raise StackError(
                        f"{component.name} (pid {pid}) exited{code} while starting; "
                        f"log {self.log_path(component)}:\n{self._tail(component, log_offset)}"
                    )
                health = component.health(ctx, client)
                if health.ok:
                    logger.info("%s answers at %s", component.name, component.url(self.settings))
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(_HEALTH_POLL_S)
        raise StackError(
            f"{component.name} (pid {pid}) did not answer at {component.url(self.settings)} "
            f"within {timeout_s:.0f} s ({health.error}); log {self.log_path(component)}:\n"
            f"{self._tail(component, log_offset)}"
        )

    def _tail(self, component: Component, log_offset: int | None) -> str:
        return _log_tail(self.log_path(component), log_offset or 0)

    def _stop(self, component: Component) -> None:
        """SIGTERM the component's session, wait, then SIGKILL; remove its pidfile."""
        path = self.pidfile_path(component)
        record = self._read_pidfile(component)
        if record is None:
            return
        if not self._is_ours(component, record):
            logger.info("%s: not running, removing pidfile (pid %s)", component.name, record.pid)
            path.unlink(missing_ok=True)
            return
        pid = record.pid
        logger.info("stopping %s (pid %d)", component.name, pid)
        # start_new_session made the process a session leader: the session holds whatever it
        # forked too, and no other program can share its ID while one of them lives.
        signals = component.stop_signals
        for sig in signals:
            if component.signal_leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            else:
                _signal_session(pid, sig)
            if _wait_gone(pid, component.stop_timeout_s / len(signals)):
                break
        else:
            logger.warning(
                "%s did not stop in %.0f s: SIGKILL", component.name, component.stop_timeout_s
            )
            _signal_session(pid, signal.SIGKILL)
            if not _wait_gone(pid, _KILL_TIMEOUT_S):
                raise StackError(f"{component.name} (pid {pid}) survived SIGKILL")
        # Gone means dead, not yet collected: a child of ours is reaped before we return, so
        # that nothing, not even a zombie, holds its PID after `down` (found by CI).
        _reap(pid, timeout_s=_KILL_TIMEOUT_S)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_stack(
    settings: Settings, components: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Start the components (all by default) for a test or a benchmark, and stop them after."""
    names = list(components) if components else list(COMPONENTS)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise StackError(f"unknown component(s) {', '.join(unknown)}")
    stack = LocalStack(settings, registry={n: COMPONENTS[n] for n in names})
    try:
        yield stack.up()
    finally:
        stack.down()
