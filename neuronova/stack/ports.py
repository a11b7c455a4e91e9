"""Loopback ports: whether one is free, free ones for a stack of its own (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import errno
import random
import socket
from pathlib import Path
from typing import Any

from common.errors import StackError
from common.settings import Settings
from neuronova.stack.workers import WORKER_POOLS


def port_free(address: str, port: int) -> bool:
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


# Servers of a stack of its own listen below the kernel's ephemeral range (32768-60999 by
# default): a port picked there can be taken, before its server starts, by the local end of any
# outgoing connection (seen in CI: a worker's health port lost to one, minutes after the pick).
_SERVER_PORTS = range(20000, 32768)


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_ports(count: int, attempts: int = 200) -> list[int]:
    """Distinct free loopback ports, outside the ephemeral range where it can be: held together
    while picked, so none repeats."""
    ephemeral = _ephemeral_range()
    candidates = [p for p in _SERVER_PORTS if p not in ephemeral]
    with contextlib.ExitStack() as held:
        picked: list[int] = []
        for port in random.sample(candidates, min(attempts, len(candidates))):
            if len(picked) == count:
                break
            sock = held.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            picked.append(port)
        while len(picked) < count:  # a crowded machine: let the kernel choose
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            picked.append(int(sock.getsockname()[1]))
        return picked


def free_consecutive_ports(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive free loopback ports (the workers' health ports)."""
    for _ in range(attempts):
        (first,) = free_ports(1)
        if all(port_free("127.0.0.1", first + n) for n in range(count)):
            return first
    raise StackError(f"found no {count} consecutive free loopback ports")


def settings_on_free_ports(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a stack of its own (tests, benchmarks): its folder, free loopback ports."""
    orthanc_http, orthanc_dicom, prefect, gateway, webapp, fhir, emr, alerts, mysql, redis = (
        free_ports(10)
    )
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
        "stack_mysql_port": mysql,
        "stack_redis_port": redis,
    }
    return Settings(**{**values, **overrides})
