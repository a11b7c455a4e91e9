"""The local stack under `settings.stack_dir`: start, check and stop its components in order.

One folder per component (config, data, log) and `run/` (pidfiles, lock). Processes are started
detached in their own session and stopped by the PIDs recorded here, never by name, so that
several stacks (the demo's, the tests') can run side by side on other ports and folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from common.errors import StackError
from common.private_files import make_private, use_private_umask
from common.settings import Settings
from neuronova.stack.component import Component, Context, Health, write_atomically
from neuronova.stack.components import COMPONENTS
from neuronova.stack.orthanc import dicom_status
from neuronova.stack.packages import TOOL_PACKAGES, ensure_npm_folders, ensure_system_packages
from neuronova.stack.ports import port_free
from neuronova.stack.processes import (
    adopt,
    alive,
    popen_of,
    proc_cmdline,
    proc_start_ticks,
    reap,
    signal_session,
    wait_gone,
)

logger = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.25
_HEALTH_REQUEST_TIMEOUT_S = 2.0
_ALREADY_RUNNING_WAIT_S = 10.0
_KILL_TIMEOUT_S = 5.0
_LOCK_TIMEOUT_S = 300.0
_LOG_TAIL_LINES = 30
_LOG_ROTATE_BYTES = 5 * 1024 * 1024


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log written since `offset`."""
    try:
        with path.open("rb") as log:
            log.seek(max(offset, log.seek(0, os.SEEK_END) - 16384))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _state(running: bool, health: Health) -> str:
    """What `stack status` shows: up, degraded (it answers but cannot do its job: `error` says
    why), not answering, or down."""
    if not running:
        return "down"
    if not health.ok:
        return "not answering"
    return "up" if health.degraded is None else "degraded"


@dataclass(frozen=True)
class _Pidfile:
    pid: int
    start_ticks: int


@dataclass
class LocalStack:
    """The local stack under `settings.stack_dir`, made of `components` in start order."""

    settings: Settings
    components: tuple[Component, ...] = COMPONENTS

    @property
    def by_name(self) -> dict[str, Component]:
        """The components by name, in start order."""
        return {c.name: c for c in self.components}

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
        selected = [self.by_name[n] for n in self._select(names)]
        return [*(p for c in selected for p in c.packages), *TOOL_PACKAGES]

    # ---- public operations

    def install(self) -> list[str]:
        """Everything the stack and the tests will need, so that later runs need no network:
        the Debian packages, the npm trees (NPM_FOLDERS) and OHIF. Starts nothing; returns
        the Debian packages."""
        from neuronova.ohif import ensure_ohif

        packages = self.packages()
        ensure_system_packages(packages)
        ensure_npm_folders()
        ensure_ohif()
        return packages

    def up(self, components: Sequence[str] | None = None) -> dict[str, Any]:
        """Install what is missing, start the components not running, wait until they answer."""
        names = self._select(components)
        ensure_system_packages(self.packages(names))
        # Before any component writes: the data folder and all it will hold are ours alone.
        use_private_umask()
        make_private(self.settings.data_dir)
        by_name = self.by_name
        with self._lock():
            started: list[Component] = []
            registered = False
            try:
                for name in names:
                    component = by_name[name]
                    if component.needs_deployments and not registered:
                        self._register_deployments()
                        registered = True
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
        by_name = self.by_name
        with self._lock():
            for name in reversed(names):
                self._stop(by_name[name])

    def status(self) -> dict[str, Any]:
        """One JSON-ready object: `up`, each component's URL under its key, and details."""
        details: dict[str, dict[str, Any]] = {}
        with httpx.Client(timeout=_HEALTH_REQUEST_TIMEOUT_S) as client:
            for component in self.components:
                pid = self.running_pid(component)
                health = (
                    component.health(self.context(component), client)
                    if pid is not None
                    else Health(False, error="not running")
                )
                details[component.name] = {
                    "running": pid is not None,
                    "pid": pid,
                    "healthy": health.ok and health.degraded is None,
                    "state": _state(pid is not None, health),
                    "url": component.url(self.settings),
                    "version": health.version,
                    "error": health.error if not health.ok else health.degraded,
                    "log": str(self.log_path(component)),
                }
        result: dict[str, Any] = {"up": all(d["healthy"] for d in details.values())}
        for component in self.components:
            result[component.key] = (
                component.status_value(self.context(component))
                if component.status_value is not None
                else component.url(self.settings)
            )
        result["credentials"] = {
            c.key: c.credentials(self.settings) for c in self.components if c.credentials
        }
        result["dicom"] = dicom_status(self.settings)
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

    def _register_deployments(self) -> None:
        """The pools and deployments on the stack's Prefect server, before a component that
        needs them starts (a failure says what to run)."""
        from neuronova.stack.workers import ensure_deployments

        logger.info("registering the work pools and deployments on the Prefect server")
        try:
            ensure_deployments(self.settings)
        except Exception as err:
            raise StackError(
                f"cannot register the deployments on the Prefect server at "
                f"{self.settings.prefect_api_url} ({type(err).__name__}: {err}); is the "
                "`prefect` component up? Then `neuronova deploy` says more"
            ) from err

    def _select(self, names: Sequence[str] | None) -> list[str]:
        known = [c.name for c in self.components]
        if not names:
            return known
        unknown = [n for n in names if n not in known]
        if unknown:
            raise StackError(
                f"unknown component(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        # Keep the stack's order: it is the start order.
        return [n for n in known if n in names]

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
        if record.pid <= 0 or not alive(record.pid):
            return False
        if proc_start_ticks(record.pid) != record.start_ticks:
            return False
        # Belt and braces: its command line names the component's executable. (A script's
        # interpreter comes first in cmdline, so look for the executable anywhere in it.)
        try:
            executable = self._command(component)[0]
        except StackError:
            return True
        # nginx rewrites its title into one string ("nginx: master process /usr/sbin/nginx …").
        return any(executable in part for part in proc_cmdline(record.pid))

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
        busy = [f"{a}:{p}" for a, p in component.ports(self.settings) if not port_free(a, p)]
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
        adopt(process)
        start_ticks = proc_start_ticks(process.pid)
        write_atomically(self.pidfile_path(component), f"{process.pid}\n{start_ticks or 0}\n")
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
                if not alive(pid):
                    child = popen_of(pid)
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
                signal_session(pid, sig)
            if wait_gone(pid, component.stop_timeout_s / len(signals)):
                break
        else:
            logger.warning(
                "%s did not stop in %.0f s: SIGKILL", component.name, component.stop_timeout_s
            )
            signal_session(pid, signal.SIGKILL)
            if not wait_gone(pid, _KILL_TIMEOUT_S):
                raise StackError(f"{component.name} (pid {pid}) survived SIGKILL")
        # Gone means dead, not yet collected: a child of ours is reaped before we return, so
        # that nothing, not even a zombie, holds its PID after `down` (found by CI).
        reap(pid, timeout_s=_KILL_TIMEOUT_S)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_stack(
    settings: Settings, components: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Start the components (all by default) for a test or a benchmark, and stop them after."""
    known = {c.name: c for c in COMPONENTS}
    names = list(components) if components else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StackError(f"unknown component(s) {', '.join(unknown)}")
    stack = LocalStack(settings, components=tuple(known[n] for n in dict.fromkeys(names)))
    try:
        yield stack.up()
    finally:
        stack.down()
