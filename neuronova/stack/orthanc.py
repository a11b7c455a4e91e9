"""Orthanc, from the Debian packages orthanc and orthanc-dicomweb: the PACS, DICOMweb on."""

from __future__ import annotations

import glob
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from common.errors import StackError
from common.settings import Settings
from neuronova.orthanc_config import dicom_config
from neuronova.stack.component import Context, Health, write_atomically

DICOMWEB_PLUGIN_GLOBS: tuple[str, ...] = (
    "/usr/share/orthanc/plugins/*DicomWeb*.so*",
    "/usr/lib/orthanc/*DicomWeb*.so*",
    "/usr/lib/orthanc/plugins/*DicomWeb*.so*",
    "/usr/lib/*/orthanc/plugins/*DicomWeb*.so*",
    "/usr/local/share/orthanc/plugins/*DicomWeb*.so*",
)

# The AET that dcmtk's storescu uses unless told otherwise; the only modality allowed to store.


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
    """Orthanc's configuration for the local stack: loopback-only HTTP with a service account,
    DICOMweb on."""
    db = home / "db"
    credentials = settings.orthanc_credentials()
    if credentials is None:
        raise StackError("the local Orthanc needs a service account: unset NEURONOVA_ENVIRONMENT")
    username, password = credentials
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
        # Loopback is not a trust boundary (a browser on this machine is an attacker): every
        # request needs the service account, which only our clients and nginx hold, and a Host
        # that names this Orthanc (a DNS-rebinding page sends its own: host-filter.lua).
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "LuaScripts": [str(home / HOST_FILTER)],
        "DicomServerEnabled": True,
        "DicomAet": settings.orthanc_aet,
        "DicomPort": settings.orthanc_dicom_port,
        # The DICOM port is open on every interface too, so stores are not allowed from anyone:
        # only the configured modalities (NEURONOVA_DICOM_MODALITIES: AET and address) may push,
        # calling this archive's AET; the same options as production's (no TLS on loopback).
        **dicom_config(settings, tls=False),
        # Ingest must never overwrite an instance silently: a second payload under the same
        # SOPInstanceUID is kept out and reported by the ingest flow.
        "OverwriteInstances": False,
        # A study is "stable" this long after its last instance: the arrival watcher then
        # hands it on (HTJ2K, index, patient, AI).
        "StableAge": settings.orthanc_stable_age_s or LOCAL_STABLE_AGE_S,
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


def dicom_status(settings: Settings) -> dict[str, object]:
    """What `stack status --json` says of the DICOM port: where to send, as which modality."""
    return {
        "host": "127.0.0.1",
        "port": settings.orthanc_dicom_port,
        "aet": settings.orthanc_aet,
        "allowed": [{"aet": m.aet, "host": m.host} for m in settings.dicom_modalities],
    }


HOST_FILTER = "host-filter.lua"
# The local stack's StableAge when none is set: a demo's study is handed on in seconds
# (production: 60 s, long enough for a modality's pauses between series).
LOCAL_STABLE_AGE_S = 5
NGINX_HOST = "orthanc"  # the Host nginx's internal location sends


def allowed_hosts(settings: Settings) -> list[str]:
    """The Host headers this Orthanc answers: its loopback URL's, and nginx's."""
    port = settings.orthanc_http_port
    return [f"127.0.0.1:{port}", f"localhost:{port}", NGINX_HOST]


def render_host_filter(settings: Settings) -> str:
    """Orthanc's Lua callback refusing (403) any request whose Host it does not know."""
    hosts = ", ".join(f'["{host}"] = true' for host in allowed_hosts(settings))
    return f"""-- Written by neuronova/stack/orthanc.py: requests with a Host Orthanc does not know
-- (DNS rebinding) are refused.
local allowed = {{ {hosts} }}

function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  local host = httpHeaders["host"] or httpHeaders["Host"] or ""
  return allowed[string.lower(host)] == true
end
"""


def credentials(settings: Settings) -> dict[str, str] | None:
    """The service account, for `stack status --json` under "credentials"."""
    account = settings.orthanc_credentials()
    return None if account is None else {"username": account[0], "password": account[1]}


def _orthanc_config_path(ctx: Context) -> Path:
    return ctx.home / "orthanc.json"


def prepare(ctx: Context) -> None:
    """Write orthanc.json and create the storage folder."""
    plugin = find_dicomweb_plugin()
    if plugin is None:
        raise StackError(
            "the Orthanc DICOMweb plugin was not found in "
            f"{', '.join(DICOMWEB_PLUGIN_GLOBS)}: install the Debian package orthanc-dicomweb"
        )
    (ctx.home / "db").mkdir(parents=True, exist_ok=True)
    config = render_orthanc_config(ctx.settings, ctx.home, plugin)
    write_atomically(_orthanc_config_path(ctx), json.dumps(config, indent=2) + "\n", mode=0o600)
    write_atomically(ctx.home / HOST_FILTER, render_host_filter(ctx.settings))


def command(ctx: Context) -> list[str]:
    binary = find_orthanc_binary()
    if binary is None:
        raise StackError("the Orthanc executable was not found: install the Debian package orthanc")
    return [str(binary), str(_orthanc_config_path(ctx))]


def status_url(settings: Settings) -> str:
    return settings.orthanc_url.rstrip("/")


def health(ctx: Context, client: httpx.Client) -> Health:
    """Orthanc answers /system, and it is ours (same AET and DICOM port), not another one."""
    try:
        response = client.get(
            f"{status_url(ctx.settings)}/system", auth=ctx.settings.orthanc_credentials()
        )
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


def ports(settings: Settings) -> list[tuple[str, int]]:
    # Orthanc binds every interface, so that is where a conflict shows.
    return [("0.0.0.0", settings.orthanc_http_port), ("0.0.0.0", settings.orthanc_dicom_port)]  # noqa: S104
