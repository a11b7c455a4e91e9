"""nginx, the gateway: the one port a browser opens (webapp, alerts, Orthanc behind the gate,
OHIF, the Prefect UI), rendered from nginx/local.conf.template."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from common.errors import StackError
from common.settings import PROJECT_ROOT, Settings
from neuronova.stack import prefect
from neuronova.stack.component import (
    Context,
    Health,
    LoopbackHttp,
    http_health,
    write_atomically,
)

NGINX_DIR = PROJECT_ROOT / "nginx"

SERVICE = LoopbackHttp("gateway", health_path="/healthz")


def find_nginx_binary() -> Path | None:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _server_names(settings: Settings) -> list[str]:
    """The Host names the gateway answers to: its configured URL's, and loopback's."""
    names = [urlsplit(settings.gateway_url).hostname or "127.0.0.1", "127.0.0.1", "localhost"]
    return [f"[{n}]" if ":" in n else n for n in dict.fromkeys(names)]


def _basic_authorization(settings: Settings) -> str:
    """`Basic …` for Orthanc's service account (what the internal location sends)."""
    account = settings.orthanc_credentials()
    if account is None:
        raise StackError("the local Orthanc needs a service account: unset NEURONOVA_ENVIRONMENT")
    return "Basic " + base64.b64encode(f"{account[0]}:{account[1]}".encode()).decode()


# Where Debian's libnginx-mod-http-brotli-static puts its module (Debian 12 and 13).
BROTLI_STATIC_MODULE = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")


def brotli_static_module() -> Path | None:
    """nginx's brotli_static module when it is installed (the stack installs it; a machine
    without it serves OHIF's gzip copies only)."""
    return BROTLI_STATIC_MODULE if BROTLI_STATIC_MODULE.is_file() else None


def render_nginx_config(
    settings: Settings, home: Path, ohif_root: Path, brotli_module: Path | None = None
) -> str:
    """The local template with this stack's ports and folders filled in; with `brotli_module`,
    nginx loads it and sends OHIF's .br files to browsers that accept them."""
    gzip_only = "# (no brotli_static module: gzip only)"
    values = {
        "@BROTLI_MODULE@": f"load_module {brotli_module};" if brotli_module else gzip_only,
        "@BROTLI_STATIC@": "include snippets/brotli-static.conf;" if brotli_module else gzip_only,
        "@WORKER_USER@": _worker_user(),
        "@HOME@": str(home),
        "@GATEWAY_PORT@": str(settings.gateway_port),
        "@SERVER_NAMES@": " ".join(_server_names(settings)),
        "@WEBAPP@": f"127.0.0.1:{settings.webapp_port}",
        "@ALERTS@": f"127.0.0.1:{settings.alerts_port}",
        "@ORTHANC@": f"127.0.0.1:{settings.orthanc_http_port}",
        "@PREFECT@": f"127.0.0.1:{settings.prefect_port}",
        "@OHIF_ROOT@": str(ohif_root),
        "@ORTHANC_AUTHORIZATION@": _basic_authorization(settings),
        "@PREFECT_AUTHORIZATION@": prefect.auth_header(settings)["Authorization"],
    }
    text = (NGINX_DIR / "local.conf.template").read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    if "@" in "".join(line.split("#")[0] for line in text.splitlines()):
        raise StackError("nginx/local.conf.template has a placeholder the stack does not fill")
    return text


def _worker_user() -> str:
    """Started by root, nginx would run its workers as `nobody`, who cannot enter the stack's
    private folder: name the stack's user. Started by anyone else, the workers are that user
    already (and nginx warns about a `user` directive)."""
    if os.geteuid() != 0:
        return "# (workers: the user who started the stack)"
    name = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {name} {group};"


def prepare(ctx: Context) -> None:
    from neuronova.ohif import ensure_ohif

    root = ensure_ohif()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (ctx.home / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    snippets = ctx.home / "snippets"
    if snippets.exists():
        shutil.rmtree(snippets)
    # Contents only (not the checkout's modes): made under the stack's umask, its user's alone.
    snippets.mkdir()
    for snippet in (NGINX_DIR / "snippets").glob("*.conf"):
        shutil.copyfile(snippet, snippets / snippet.name)
    # 0600: it holds Orthanc's service password.
    config = render_nginx_config(ctx.settings, ctx.home, root, brotli_static_module())
    write_atomically(ctx.home / "nginx.conf", config, mode=0o600)
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


def command(ctx: Context) -> list[str]:
    binary = find_nginx_binary()
    if binary is None:
        raise StackError("nginx not found: install the Debian package nginx")
    return [str(binary), *_nginx_args(ctx), "-g", "daemon off;"]


def health(ctx: Context, client: httpx.Client) -> Health:
    """nginx answers itself, and reaches the webapp through /api."""
    base = SERVICE.url(ctx.settings)
    own = http_health(client, f"{base}/healthz")
    return own if not own.ok else http_health(client, f"{base}/api/health")
