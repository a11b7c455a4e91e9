"""The local stack: config rendering and process handling with stand-in processes, then the
real Orthanc and Prefect server started by the same code as `neuronova stack up`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from common.errors import StackError
from common.settings import Settings
from neuronova import stack as stack_module
from neuronova.stack import (
    COMPONENTS,
    Component,
    Context,
    Health,
    LocalStack,
    ensure_system_packages,
    find_dicomweb_plugin,
    prefect_env,
    render_orthanc_config,
    running_stack,
    settings_env,
    settings_on_free_ports,
)
from neuronova.stack_cli import app
from tests.processes import reaped

# --------------------------------------------------------------------------- helpers


def make_settings(data_dir: Path) -> Settings:
    """Test settings: own folder, free ports."""
    return settings_on_free_ports(data_dir)


def gone(pid: int) -> bool:
    """Whether the PID no longer runs (a zombie counts as gone)."""
    return not stack_module._alive(pid)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (e.g. a stack folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and text in " ".join(stack_module._proc_cmdline(int(entry.name))):
            if stack_module._alive(int(entry.name)):
                found.append(int(entry.name))
    return found


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
    return LocalStack(make_settings(tmp_path), registry={c.name: c for c in components})


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process, to stand for a PID reused by another program."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


# --------------------------------------------------------------------------- rendering


def test_orthanc_config_is_loopback_only_with_dicomweb(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    home = settings.stack_dir / "orthanc"
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    config = render_orthanc_config(settings, home, plugin)

    assert config["HttpPort"] == settings.orthanc_http_port
    assert config["DicomPort"] == settings.orthanc_dicom_port
    assert config["DicomAet"] == settings.orthanc_aet
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is False
    assert config["OverwriteInstances"] is False
    assert config["StorageCompression"] is False
    assert Path(config["StorageDirectory"]).is_relative_to(settings.stack_dir)
    assert Path(config["IndexDirectory"]).is_relative_to(settings.stack_dir)
    assert config["Plugins"] == [str(plugin)]
    assert config["DicomWeb"]["Enable"] is True
    assert config["DicomWeb"]["Root"] == "/dicom-web/"
    assert config["DicomWeb"]["WadoRoot"] == "/wado"
    assert config["DicomWeb"]["StudiesMetadata"] == "Full"
    # Only storescu from this host may store; the port is open on every interface.
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomCheckModalityHost"] is True
    assert ["STORESCU", "127.0.0.1"] == config["DicomModalities"]["storescu"][:2]
    # It stops Orthanc 1.10.1 from starting with the HTJ2K UID.
    assert "IngestTranscoding" not in config
    json.dumps(config)


def test_dicomweb_plugin_found_by_glob_prefers_unversioned(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "libOrthancDicomWeb.so.1.7").touch()
    (plugins / "libOrthancDicomWeb.so").touch()
    (plugins / "libServeFolders.so").touch()
    patterns = [str(tmp_path / "missing/*DicomWeb*.so*"), str(plugins / "*DicomWeb*.so*")]

    assert find_dicomweb_plugin(patterns) == plugins / "libOrthancDicomWeb.so"
    assert find_dicomweb_plugin([str(tmp_path / "missing/*.so")]) is None


def test_prefect_env_keeps_everything_under_the_stack(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    home = settings.stack_dir / "prefect"
    env = prefect_env(Context(settings=settings, home=home))

    assert env["PREFECT_HOME"] == str(home)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{home}/prefect.db"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_API_URL"] == settings.prefect_api_url


def test_unknown_component_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"unknown component.*bogus"):
        LocalStack(make_settings(tmp_path)).up(["bogus"])
    with pytest.raises(StackError, match="unknown component"):
        with running_stack(make_settings(tmp_path), ["bogus"]):
            pass


def test_default_registry_starts_the_gateway_after_what_it_fronts() -> None:
    # The workers come last: the flows they run need every other part.
    assert list(COMPONENTS) == [
        "orthanc", "prefect", "webapp", "alerts", "nginx", "fhir", "emr", "worker-cpu",
        "worker-gpu",
    ]  # fmt: skip


def test_workers_stop_on_sigint_first_and_have_health_ports_of_their_own(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    cpu, gpu = COMPONENTS["worker-cpu"], COMPONENTS["worker-gpu"]
    assert cpu.stop_signals[0] == signal.SIGINT and cpu.signal_leader  # it forwards to its worker
    assert [p for _, p in cpu.ports(settings)] == [settings.worker_health_port]
    assert [p for _, p in gpu.ports(settings)] == [settings.worker_health_port + 1]
    command = cpu.command(Context(settings, tmp_path))
    assert command[command.index("--pool") + 1] == "cpu"
    assert command[command.index("--limit") + 1] == str(settings.worker_limit)
    env = gpu.env(Context(settings, tmp_path))
    assert env["NEURONOVA_HANDOFF"] == "deployment"
    assert env["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"
    assert env["PREFECT_API_URL"] == settings.prefect_api_url


def test_settings_env_round_trips_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path).model_copy(
        update={"jwt_secret": SecretStr("s" * 40), "orthanc_retry_delays_s": [0.1, 0.2]}
    )
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


# --------------------------------------------------------------------------- system packages


def test_ensure_system_packages_installs_only_missing_and_updates_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed = {"orthanc"}
    calls: list[list[str]] = []

    def fake_apt(args: list[str]) -> None:
        calls.append(list(args))
        if args[0] == "install":
            installed.update(args[3:])

    monkeypatch.setattr(stack_module, "_dpkg_installed", lambda p: p in installed)
    monkeypatch.setattr(stack_module, "_run_apt", fake_apt)
    monkeypatch.setattr(stack_module, "_apt_updated", False)

    ensure_system_packages(["orthanc"])
    assert calls == []
    ensure_system_packages(["orthanc", "dcmtk"])
    ensure_system_packages(["dicom3tools"])
    assert calls == [
        ["update"],
        ["install", "-y", "--no-install-recommends", "dcmtk"],
        ["install", "-y", "--no-install-recommends", "dicom3tools"],
    ]


def test_ensure_system_packages_fails_when_apt_cannot_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack_module, "_dpkg_installed", lambda p: False)
    monkeypatch.setattr(stack_module, "_run_apt", lambda args: None)
    with pytest.raises(StackError, match="could not install: no-such-package"):
        ensure_system_packages(["no-such-package"])


# --------------------------------------------------------------------------- processes (stand-ins)


def test_up_status_down_with_stand_ins(tmp_path: Path) -> None:
    stack = stand_in_stack(tmp_path, stand_in("alpha", SERVER), stand_in("beta", FORKING))

    status = stack.up()
    assert status["up"] is True
    assert status["alpha"] == "stand-in://alpha"
    pids = {name: detail["pid"] for name, detail in status["components"].items()}
    grandchild = int((stack.root / "beta" / "child.pid").read_text())
    assert all(stack.pidfile_path(c).exists() for c in stack.registry.values())

    assert stack.up()["components"]["alpha"]["pid"] == pids["alpha"]  # left alone

    stack.down()
    assert all(gone(pid) for pid in [*pids.values(), grandchild])
    assert all(reaped(pid) for pid in pids.values())  # our children are collected, too
    assert not any(stack.pidfile_path(c).exists() for c in stack.registry.values())
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
    assert not stack.pidfile_path(stack.registry["mute"]).exists()


def test_a_process_that_ignores_sigterm_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack_module, "_STOP_TIMEOUT_S", 0.5)
    stack = stand_in_stack(tmp_path, stand_in("stubborn", STUBBORN))
    pid = stack.up()["components"]["stubborn"]["pid"]

    stack.down()
    assert gone(pid)


def test_a_child_that_dies_between_reap_and_look_is_still_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race CI found: the child exits after `_alive` polled it and before it read /proc,
    so it is seen as a zombie; `_alive` must collect it then, not leave it in the table."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    monkeypatch.setitem(stack_module._CHILDREN, child.pid, child)
    deadline = time.monotonic() + 10
    while (stack_module._proc_stat(child.pid) or ["Z"])[0] != "Z":  # a zombie, not yet waited
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.02)
    real_reap = stack_module._reap
    calls: list[int] = []

    def reap_late(pid: int, timeout_s: float = 0.0) -> None:
        calls.append(pid)
        if len(calls) > 1:  # the first poll "comes too early", as in the race
            real_reap(pid, timeout_s)

    monkeypatch.setattr(stack_module, "_reap", reap_late)
    assert stack_module._alive(child.pid) is False
    assert reaped(child.pid)
    assert child.returncode == 0


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
    component = stack.registry["alpha"]
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
    component = stack.registry["alpha"]
    ticks = stack_module._proc_start_ticks(sleeper.pid) if same_start_time else 1
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


def test_cli_status_json_when_nothing_runs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    result = CliRunner().invoke(app, ["status", "--json"], env=settings_env(settings))

    assert result.exit_code == 1
    status = json.loads(result.stdout)
    assert status["up"] is False
    assert status["orthanc"] == settings.orthanc_url
    assert status["prefect"] == settings.prefect_api_url
    assert status["components"]["orthanc"]["running"] is False


def test_cli_reports_unknown_component(tmp_path: Path) -> None:
    env = settings_env(make_settings(tmp_path))
    result = CliRunner().invoke(app, ["up", "--only", "orthanc,bogus"], env=env)
    assert result.exit_code == 1
    assert "unknown component" in result.stderr


# --------------------------------------------------------------------------- real services


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole stack (Orthanc, Prefect, webapp, nginx), once for this module (~30 s)."""
    stack = LocalStack(make_settings(tmp_path_factory.mktemp("full")))
    status = stack.up()
    pids = [detail["pid"] for detail in status["components"].values()]
    yield stack
    stack.down()
    assert all(gone(pid) for pid in pids)
    assert not processes_mentioning(str(stack.root))


@pytest.fixture
def orthanc_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A stack of Orthanc alone (it starts in about a second)."""
    stack = LocalStack(make_settings(tmp_path), registry={"orthanc": COMPONENTS["orthanc"]})
    yield stack
    stack.down()


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
def test_orthanc_answers_rest_and_dicomweb(full_stack: LocalStack) -> None:
    base = full_stack.settings.orthanc_url
    system = httpx.get(f"{base}/system", timeout=5).json()
    assert system["DicomAet"] == full_stack.settings.orthanc_aet
    assert system["HttpPort"] == full_stack.settings.orthanc_http_port

    studies = httpx.get(f"{base}/dicom-web/studies", timeout=5)
    assert studies.status_code == 200  # the DICOMweb plugin is loaded
    assert isinstance(studies.json(), list)
    assert full_stack.root.joinpath("orthanc", "db", "index").exists()


@pytest.mark.integration
def test_prefect_answers_health(full_stack: LocalStack) -> None:
    response = httpx.get(f"{full_stack.settings.prefect_api_url}/health", timeout=5)
    assert response.json() is True
    assert full_stack.root.joinpath("prefect", "prefect.db").exists()


@pytest.mark.integration
def test_cli_status_json_when_up(full_stack: LocalStack) -> None:
    result = CliRunner().invoke(app, ["status", "--json"], env=settings_env(full_stack.settings))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["up"] is True


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
    with pytest.raises(StackError, match=r"orthanc: port .* already in use.*NEURONOVA_ORTHANC"):
        other.up()
    assert not list(other.run_dir.glob("*.pid"))
    assert full_stack.status()["up"] is True


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_storescu_may_push_and_other_callers_may_not(full_stack: LocalStack) -> None:
    settings = full_stack.settings
    path = get_testdata_file("CT_small.dcm")

    def push(aet: str) -> int:
        command = ["storescu", "-aet", aet, "-aec", settings.orthanc_aet, "127.0.0.1"]
        return subprocess.run(
            [*command, str(settings.orthanc_dicom_port), str(path)], capture_output=True
        ).returncode

    assert push("INTRUDER") != 0
    assert httpx.get(f"{settings.orthanc_url}/instances", timeout=5).json() == []
    assert push("STORESCU") == 0
    assert len(httpx.get(f"{settings.orthanc_url}/instances", timeout=5).json()) == 1


@pytest.mark.integration
def test_down_stops_orthanc_and_frees_its_ports(orthanc_stack: LocalStack) -> None:
    settings = orthanc_stack.settings
    pid = orthanc_stack.up()["components"]["orthanc"]["pid"]
    assert processes_mentioning(str(orthanc_stack.root)) == [pid]

    orthanc_stack.down()
    assert gone(pid)
    assert not processes_mentioning(str(orthanc_stack.root))
    assert not list(orthanc_stack.run_dir.glob("*.pid"))
    for port in (settings.orthanc_http_port, settings.orthanc_dicom_port):
        assert stack_module._port_free("0.0.0.0", port)


@pytest.mark.integration
def test_a_killed_orthanc_is_restarted_with_its_data(orthanc_stack: LocalStack) -> None:
    base = orthanc_stack.settings.orthanc_url
    pid = orthanc_stack.up()["components"]["orthanc"]["pid"]
    stored = httpx.post(
        f"{base}/instances", content=Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()
    )
    assert stored.status_code == 200
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert orthanc_stack.status()["up"] is False
    new_pid = orthanc_stack.up()["components"]["orthanc"]["pid"]
    assert new_pid != pid
    assert httpx.get(f"{base}/instances", timeout=5).json() == [stored.json()["ID"]]


@pytest.mark.integration
def test_orthanc_start_fails_cleanly_when_its_port_is_taken(orthanc_stack: LocalStack) -> None:
    port = orthanc_stack.settings.orthanc_dicom_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(StackError, match=f"port 0.0.0.0:{port} already in use"):
            orthanc_stack.up()
    assert not processes_mentioning(str(orthanc_stack.root))
    assert not list(orthanc_stack.run_dir.glob("*.pid"))


@pytest.mark.integration
def test_running_stack_ups_and_downs(tmp_path: Path) -> None:
    with running_stack(make_settings(tmp_path), ["orthanc"]) as status:
        assert status["up"] is True
        pid = status["components"]["orthanc"]["pid"]
        assert "prefect" not in status
    assert gone(pid)
