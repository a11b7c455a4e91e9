"""Hosts and networks made of Linux network namespaces, as Docker lays out containers: one
namespace per node, one bridge per network (in a namespace of its own that stands for the Docker
host, where published ports listen), one veth per (node, network), each node with its own
/etc/hosts, /tmp and /run. scripts/compose-check builds the production compose file with it;
scripts/multi-host-check (issue 27) is to build its hosts with it too.

Nothing here touches this machine's own network: every address lives in namespaces made here,
and everything made is removed by `Lab.close()` (also after a crash of the test: the names carry
the lab's prefix, and `remove_stale(prefix)` clears what a killed run left).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.settings import PROJECT_ROOT

LAUNCHER = "tests.support.netns_launch"


class LabError(RuntimeError):
    """A namespace, bridge or process of the lab could not be made or started."""


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"{' '.join(command)}: {result.stderr.strip()}")


def require_root_and_iproute() -> None:
    if os.geteuid() != 0:
        raise LabError("network namespaces need root (run the check as root)")
    if shutil.which("ip") is None:
        raise LabError("`ip` not found: run `make system` (Debian's iproute2)")


def _mountpoint_record(prefix: str) -> Path:
    return Path("/var/tmp") / f"{prefix}.mountpoints"


def _remove_mountpoints(paths: Sequence[Path]) -> None:
    """Empty mount points made for the lab (deepest first); anything with content stays."""
    for path in sorted(set(paths), key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_file() and not path.is_symlink():
                if path.stat().st_size == 0:
                    path.unlink()
            else:
                path.rmdir()
        except OSError:
            pass  # not empty, or gone


def remove_stale(prefix: str) -> None:
    """What a killed run of this lab left behind: its namespaces (their processes die with
    them) and the empty mount points it made."""
    record = _mountpoint_record(prefix)
    if record.exists():
        _remove_mountpoints([Path(line) for line in record.read_text().splitlines() if line])
        record.unlink()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            # A name whose namespace was never mounted (its `ip netns add` failed halfway)
            # is a plain file that `ip netns del` leaves.
            Path("/run/netns", name).unlink(missing_ok=True)


def _kill_namespace_processes(namespace: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Network:
    name: str
    subnet: ipaddress.IPv4Network
    bridge: str
    next_host: int = 2  # .1 is the bridge (Docker's gateway)
    taken: set[ipaddress.IPv4Address] = field(default_factory=set)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    def allocate(self, wanted: str | None = None) -> ipaddress.IPv4Address:
        if wanted:
            address = ipaddress.IPv4Address(wanted)
            if address not in self.subnet or address in self.taken:
                raise LabError(f"{wanted} is not free in {self.name} ({self.subnet})")
        else:
            while (address := self.subnet.network_address + self.next_host) in self.taken:
                self.next_host += 1
        self.taken.add(address)
        return address


@dataclass
class Node:
    name: str
    namespace: str
    home: Path  # its private /tmp and /run live here
    addresses: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)  # network → address


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str  # a path as the node sees it
    read_only: bool = False


class Lab:
    """Namespaces named `<prefix>-…`; `host` stands for the Docker host (bridges, published
    ports, the browser)."""

    def __init__(self, prefix: str, home: Path) -> None:
        require_root_and_iproute()
        remove_stale(prefix)
        self.prefix = prefix
        self.home = home
        self.host = f"{prefix}-host"
        self.networks: dict[str, Network] = {}
        self.nodes: dict[str, Node] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._made_mountpoints: list[Path] = []
        _ip("netns", "add", self.host)
        _ip("link", "set", "lo", "up", namespace=self.host)

    # ------------------------------------------------------------------ layout

    def add_network(self, name: str, subnet: str) -> Network:
        bridge = f"br{len(self.networks)}"
        network = Network(name, ipaddress.IPv4Network(subnet), bridge)
        _ip("link", "add", bridge, "type", "bridge", namespace=self.host)
        _ip(
            "addr",
            "add",
            f"{network.gateway}/{network.subnet.prefixlen}",
            "dev",
            bridge,
            namespace=self.host,
        )
        _ip("link", "set", bridge, "up", namespace=self.host)
        network.taken.add(network.gateway)
        self.networks[name] = network
        return network

    def add_node(self, name: str) -> Node:
        namespace = f"{self.prefix}-{name}"
        _ip("netns", "add", namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        home = self.home / "nodes" / name
        for folder in ("tmp", "run"):
            (home / folder).mkdir(parents=True, exist_ok=True)
            os.chmod(home / folder, 0o1777)
        node = Node(name, namespace, home)
        self.nodes[name] = node
        return node

    def attach(self, node: Node, network: Network, address: str | None = None) -> None:
        """A veth from the network's bridge into the node (eth0, eth1 … in attach order)."""
        index = len(node.addresses)
        outside = f"v{list(self.nodes).index(node.name)}x{index}"
        inside = f"eth{index}"
        assigned = network.allocate(address)
        _ip(
            "link",
            "add",
            outside,
            "type",
            "veth",
            "peer",
            "name",
            inside,
            "netns",
            node.namespace,
            namespace=self.host,
        )
        _ip("link", "set", outside, "master", network.bridge, "up", namespace=self.host)
        _ip(
            "addr",
            "add",
            f"{assigned}/{network.subnet.prefixlen}",
            "dev",
            inside,
            namespace=node.namespace,
        )
        _ip("link", "set", inside, "up", namespace=node.namespace)
        node.addresses[network.name] = assigned

    def write_hosts(self, node: Node, names: dict[str, ipaddress.IPv4Address]) -> Path:
        """The node's /etc/hosts: what Docker's DNS would answer it (names it shares a network
        with, at their address on that network), and nothing else."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{address}\t{name}" for name, address in sorted(names.items())]
        path = node.home / "hosts"
        path.write_text("\n".join(lines) + "\n")
        resolv = node.home / "resolv.conf"
        resolv.write_text("# no DNS server: names are in /etc/hosts\n")
        for readable in (path, resolv):  # by every user of the node, whatever the umask
            readable.chmod(0o644)
        return path

    # ------------------------------------------------------------------ processes

    def base_mounts(self, node: Node) -> list[Mount]:
        """What every node gets: its own /tmp, /run (with /run/secrets), /etc/hosts."""
        return [
            Mount(node.home / "tmp", "/tmp"),
            Mount(node.home / "run", "/run"),
            Mount(node.home / "hosts", "/etc/hosts", read_only=True),
            Mount(node.home / "resolv.conf", "/etc/resolv.conf", read_only=True),
        ]

    def prepare_mountpoints(self, mounts: Sequence[Mount]) -> None:
        """Mount points that do not exist yet are made here (and removed by close() if still
        empty): the launcher then only mounts."""
        for item in mounts:
            target = Path(item.target)
            if target.exists() or target.is_symlink():
                continue
            if _under_private(target):
                continue  # inside the node's own /tmp or /run: the launcher makes it there
            missing = [p for p in [target, *target.parents] if not p.exists()]
            if item.source.is_dir():
                target.mkdir(parents=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            self._made_mountpoints.extend(missing)
            with _mountpoint_record(self.prefix).open("a") as record:
                record.writelines(f"{path}\n" for path in missing)

    def launch_command(
        self,
        node: Node,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        mounts: Sequence[Mount],
        user: str | None = None,
        cwd: str | None = None,
        tag: str = "main",
    ) -> list[str]:
        """The command line that runs argv in the node (namespace, mounts, user, env)."""
        spec = {
            "mounts": [[str(m.source), m.target, m.read_only] for m in mounts],
            "env": env,
            "user": user,
            "cwd": cwd,
            "argv": list(argv),
        }
        spec_file = node.home / f"launch-{tag}.json"
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(spec, handle)
        python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
        if not Path(python).exists():
            python = sys.executable
        return ["ip", "netns", "exec", node.namespace, python, "-m", LAUNCHER, str(spec_file)]

    def start(self, node: Node, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running process in the node, its output in <lab>/logs/<node>.log."""
        command = self.launch_command(node, argv, **kwargs)  # type: ignore[arg-type]
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        log = (logs / f"{node.name}.log").open("ab")
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
        self.processes[node.name] = process
        return process

    def run(
        self,
        node: Node,
        argv: Sequence[str],
        *,
        timeout_s: float = 60,
        input_text: str | None = None,
        **kwargs: object,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to its end in the node (`docker compose exec`)."""
        command = self.launch_command(node, argv, tag="exec", **kwargs)  # type: ignore[arg-type]
        return subprocess.run(
            command,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=PROJECT_ROOT,
            check=False,
        )

    def run_in_host(
        self, argv: Sequence[str], *, timeout_s: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command in the host namespace (where published ports are), as this machine's
        user would run it: the same files, only the network is the lab's."""
        return subprocess.run(
            ["ip", "netns", "exec", self.host, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=PROJECT_ROOT,
            env=env,
            check=False,
        )

    def start_in_host(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        log = (logs / f"host-{name}.log").open("ab")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.host, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
        self.processes[f"host-{name}"] = process
        return process

    def stop(self, name: str, stop_signal: int = signal.SIGTERM, grace_s: float = 10) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.kill(process.pid, stop_signal)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name, grace_s=5)
        for node in self.nodes.values():
            _kill_namespace_processes(node.namespace)
            subprocess.run(["ip", "netns", "del", node.namespace], capture_output=True, check=False)
        _kill_namespace_processes(self.host)
        subprocess.run(["ip", "netns", "del", self.host], capture_output=True, check=False)
        _remove_mountpoints(self._made_mountpoints)
        _mountpoint_record(self.prefix).unlink(missing_ok=True)


def _under_private(target: Path) -> bool:
    return target.parts[:2] in {("/", "tmp"), ("/", "run")} or str(target).startswith("/var/run")
