"""What a component of the stack is, and the helpers the components share to configure and
check their processes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from common.settings import Settings

_STOP_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Context:
    """What a component needs to render its config and command line."""

    settings: Settings
    home: Path  # the component's own folder under stack_dir (absolute)


@dataclass(frozen=True)
class Health:
    """The answer of one health check: `ok` when the process answers; `degraded` says why it
    answers yet cannot do its job (the arrival watcher with no deployment to start, a worker
    with nothing to run)."""

    ok: bool
    version: str | None = None
    error: str | None = None
    degraded: str | None = None


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
    # Its secrets, shown under `status()["credentials"][key]` (never in a URL or a log).
    credentials: Callable[[Settings], Any] | None = None
    start_timeout_s: float = 30.0
    # Sent in turn, each followed by a share of the stop timeout, before SIGKILL (to the whole
    # session). To the session too, unless the leader forwards them itself (`signal_leader`).
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)
    signal_leader: bool = False
    stop_timeout_s: float = _STOP_TIMEOUT_S
    port_hint: str = ""  # how to move it to other ports, for the "port in use" message
    # It starts Prefect runs or runs them (the workers, the arrival watcher): `stack up` first
    # registers the work pools and deployments (once per call, idempotently), so that a stack
    # started by `stack up` alone processes what arrives.
    needs_deployments: bool = False


@dataclass(frozen=True)
class LoopbackHttp:
    """A component that serves HTTP on loopback at the settings' `<name>_url`, bound to their
    `<name>_port`: its address in `status()`, the port it binds and its health check (HTTP 200
    at `health_path`) all follow from that one setting."""

    name: str  # e.g. "fhir": Settings.fhir_url and Settings.fhir_port
    health_path: str

    def __post_init__(self) -> None:
        for attribute in (f"{self.name}_url", f"{self.name}_port"):
            if attribute not in Settings.model_fields and not hasattr(Settings, attribute):
                raise AttributeError(f"Settings has no {attribute}")

    def url(self, settings: Settings) -> str:
        return str(getattr(settings, f"{self.name}_url")).rstrip("/")

    def ports(self, settings: Settings) -> list[tuple[str, int]]:
        return [(LOOPBACK, int(getattr(settings, f"{self.name}_port")))]

    def health(self, ctx: Context, client: httpx.Client) -> Health:
        return http_health(client, f"{self.url(ctx.settings)}{self.health_path}")


def http_health(client: httpx.Client, url: str) -> Health:
    """Healthy when `url` answers HTTP 200."""
    try:
        response = client.get(url)
    except httpx.HTTPError as err:
        return Health(False, error=f"{type(err).__name__}: {err}")
    if response.status_code != 200:
        return Health(False, error=f"GET {url} answered HTTP {response.status_code}")
    return Health(True)


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


def write_atomically(path: Path, text: str, *, mode: int = 0o644, exact_mode: bool = False) -> None:
    """Replace the file in one step, so a process never reads half of it; `mode` from the
    start (0o600 for a file that holds a password: never readable by others, not even briefly),
    less what the umask takes off (the stack runs under 077: its data folder is its own), or
    exactly `mode` with `exact_mode` (a file another user, in another container, must read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    if exact_mode:
        os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
