"""The Prefect workers: how they stop, their ports, command line and environment."""

from __future__ import annotations

import signal
from pathlib import Path

from neuronova.stack.component import Context
from neuronova.stack.ports import settings_on_free_ports
from neuronova.stack.workers import WORKERS


def test_workers_stop_on_sigint_first_and_have_health_ports_of_their_own(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path)
    workers = {c.name: c for c in WORKERS}
    cpu, gpu = workers["worker-cpu"], workers["worker-gpu"]
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
