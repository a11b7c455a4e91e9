"""The supervisor: start order, and process handling with stand-in processes (started, found
by pidfile, stopped, killed, refused a port), then the whole stack of real services."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.errors import StackError
from neuronova.stack.component import Component, Context, Health
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.processes import proc_start_ticks
from neuronova.stack.supervisor import COMPONENTS, LocalStack, running_stack
from tests.support.processes import gone, processes_mentioning, reaped

# --------------------------------------------------------------------------- stand-ins


def stand_in(
    name: str, script: str, *, timeout_s: float = 10.0, ports: list[int] | None = None
) -> Component:
    """A component run by this Python: healthy once it has written `ready` in its folder."""

    def health(ctx: Context, client: httpx.Client) -> Health:
        ready = ctx.home / "ready"
        return Health(ready.exists(), version="0" if ready.exists() else None, error="not ready")

    return Component(
        name=name,
        key=name,
        url=lambda settings: f"stand-in://{name}",
        # The folder on the command line lets a test find the process by its stack.
        command=lambda ctx: [sys.executable, "-c", script, str(ctx.home)],
        health=health,
        ports=lambda settings: [("127.0.0.1", p) for p in ports or []],
        start_timeout_s=timeout_s,
    )


# Writes what it inherited as PREFECT_API_URL, then sleeps: a well-behaved server.
SERVER = (
    "import os, pathlib, time\n"
    "pathlib.Path('ready').write_text(os.environ.get('PREFECT_API_URL', '-'))\n"
    "time.sleep(600)\n"
)
# Forks a grandchild (as a server's worker would) before it reports ready.
FORKING = (
    "import pathlib, subprocess, time\n"
    "child = subprocess.Popen(['sleep', '600'])\n"
    "pathlib.Path('child.pid').write_text(str(child.pid))\n"
    "pathlib.Path('ready').write_text('')\n"
    "time.sleep(600)\n"
)
CRASHING = "import sys\nprint('boom: bad configuration', file=sys.stderr)\nsys.exit(3)\n"
SILENT = "import time\ntime.sleep(600)\n"
STUBBORN = (
    "import pathlib, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path('ready').write_text('')\n"
    "time.sleep(600)\n"
)


def stand_in_stack(tmp_path: Path, *components: Component) -> LocalStack:
    return LocalStack(settings_on_free_ports(tmp_path), components=components)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process, to stand for a PID reused by another program."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


# --------------------------------------------------------------------------- components


def test_unknown_component_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"unknown component.*bogus"):
        LocalStack(settings_on_free_ports(tmp_path)).up(["bogus"])
    with pytest.raises(StackError, match="unknown component"):
        with running_stack(settings_on_free_ports(tmp_path), ["bogus"]):
            pass


def test_the_start_order_puts_the_gateway_after_what_it_fronts() -> None:
    # The databases come first, then the workers: the flows they run need every other part;
    # last the arrival watcher, which gives the workers their studies.
    assert [c.name for c in COMPONENTS] == [
        "mariadb",
        "redis",
        "orthanc",
        "prefect",
        "webapp",
        "alerts",
        "nginx",
        "fhir",
        "emr",
        "worker-cpu",
        "worker-gpu",
        "arrivals",
    ]


# --------------------------------------------------------------------------- processes (stand-ins)


def test_up_status_down_with_stand_ins(tmp_path: Path) -> None:
    stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER), stand_in("beta", FORKING))

    status = stack.up()
    assert status["up"] is True
    assert status["alpha"] == "stand-in://alpha"
    pids = {name: detail["pid"] for name, detail in status["components"].items()}
    grandchild = int((stack.root / "beta" / "child.pid").read_text())
    assert all(stack.pidfile_path(c).exists() for c in stack.components)

    assert stack.up()["components"]["alpha"]["pid"] == pids["alpha"]  # left alone

    stack.down()
    assert all(gone(pid) for pid in [*pids.values(), grandchild])
    assert all(reaped(pid) for pid in pids.values())  # our children are collected, too
    assert not any(stack.pidfile_path(c).exists() for c in stack.components)
    assert stack.status()["up"] is False
    stack.down()  # nothing left to stop: a no-op


def test_inherited_prefect_settings_do_not_reach_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:1/api")
    stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER))
    with_stack = stack.up()
    try:
        assert with_stack["up"]
        assert (stack.root / "alpha" / "ready").read_text() == "-"
    finally:
        stack.down()


def test_a_crash_while_starting_stops_what_this_call_started(tmp_path: Path) -> None:
    stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER), stand_in("beta", CRASHING))

    with pytest.raises(StackError) as raised:
        stack.up()
    message = str(raised.value)
    assert "beta" in message and "code 3" in message
    assert "boom: bad configuration" in message  # the log tail
    assert stack.status()["components"]["alpha"]["running"] is False
    assert not list(stack.run_dir.glob("*.pid"))
    assert not processes_mentioning(str(stack.root))


def test_a_start_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    stack = stand_in_stack(tmp_path, stand_in("mute", SILENT, timeout_s=1.0))

    with pytest.raises(StackError, match=r"mute \(pid (\d+)\) did not answer") as raised:
        stack.up()
    pid = int(raised.value.args[0].split("pid ")[1].split(")")[0])
    assert gone(pid)
    assert not stack.pidfile_path(stack.by_name["mute"]).exists()


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    stubborn = dataclasses.replace(stand_in("stubborn", STUBBORN), stop_timeout_s=0.5)
    stack = stand_in_stack(tmp_path, stubborn)
    pid = stack.up()["components"]["stubborn"]["pid"]

    stack.down()
    assert gone(pid)


def test_a_taken_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER, ports=[port]))
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} already in use"):
            stack.up()
    assert not list(stack.run_dir.glob("*.pid"))


def test_a_pidfile_of_a_dead_process_is_stale(tmp_path: Path) -> None:
    stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER))
    component = stack.by_name["alpha"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    stack.run_dir.mkdir(parents=True)
    stack.pidfile_path(component).write_text(f"{dead.pid}\n12345\n")

    assert stack.status()["components"]["alpha"]["running"] is False
    try:
        pid = stack.up()["components"]["alpha"]["pid"]
        assert pid != dead.pid
        assert stack.pidfile_path(component).read_text().split()[0] == str(pid)
    finally:
        stack.down()


@pytest.mark.parametrize("same_start_time", [True, False], ids=["other-program", "reused-pid"])
def test_a_pidfile_naming_another_program_is_stale_and_that_program_survives(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], same_start_time: bool
) -> None:
    stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER))
    component = stack.by_name["alpha"]
    ticks = proc_start_ticks(sleeper.pid) if same_start_time else 1
    stack.run_dir.mkdir(parents=True)
    stack.pidfile_path(component).write_text(f"{sleeper.pid}\n{ticks}\n")

    assert stack.running_pid(component) is None
    stack.down()
    assert sleeper.poll() is None  # still running: never signalled
    assert not stack.pidfile_path(component).exists()

    stack.pidfile_path(component).write_text(f"{sleeper.pid}\n{ticks}\n")
    try:
        assert stack.up()["components"]["alpha"]["pid"] != sleeper.pid
    finally:
        stack.down()
    assert sleeper.poll() is None


# --------------------------------------------------------------------------- real services


@pytest.mark.integration
def test_full_stack_is_up(full_stack: LocalStack) -> None:
    status = full_stack.status()
    settings = full_stack.settings

    assert status["up"] is True
    assert status["orthanc"] == settings.orthanc_url
    assert status["prefect"] == settings.prefect_api_url
    assert status["gateway"] == settings.gateway_url
    assert status["webapp"] == settings.webapp_url
    assert all(detail["healthy"] for detail in status["components"].values())
    orthanc, prefect = status["components"]["orthanc"], status["components"]["prefect"]
    assert orthanc["version"] and prefect["version"]
    assert json.loads(json.dumps(status)) == status


@pytest.mark.integration
def test_up_again_leaves_running_processes_alone(full_stack: LocalStack) -> None:
    before = full_stack.status()["components"]
    after = full_stack.up()["components"]
    assert {n: d["pid"] for n, d in after.items()} == {n: d["pid"] for n, d in before.items()}


@pytest.mark.integration
def test_a_second_stack_on_the_same_ports_refuses_to_start(
    full_stack: LocalStack, tmp_path: Path
) -> None:
    other = LocalStack(full_stack.settings.model_copy(update={"data_dir": tmp_path}))
    # The first component it would start finds its port taken, and says how to move it.
    with pytest.raises(StackError, match=r"mariadb: port .* in use.*NEURONOVA_STACK_MYSQL_PORT"):
        other.up()
    assert not list(other.run_dir.glob("*.pid"))
    assert full_stack.status()["up"] is True


@pytest.mark.integration
def test_running_stack_ups_and_downs(tmp_path: Path) -> None:
    with running_stack(settings_on_free_ports(tmp_path), ["orthanc"]) as status:
        assert status["up"] is True
        pid = status["components"]["orthanc"]["pid"]
        assert "prefect" not in status
    assert gone(pid)
