"""Loopback ports: whether one is free, free ones for a stack of its own (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import errno
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
