"""docker-compose.yml as Compose reads it: `docker-compose config` (Debian's; no engine runs
here) with a given .env, in a scratch folder (never the developer's own .env or secrets), and
the shapes either docker-compose writes (1.29 on Debian 12, 2.x on Debian 13) read alike."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from common.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def env_example() -> dict[str, str]:
    """.env.example's assignments (what an operator starts from)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def file_variables() -> set[str]:
    """Every ${VAR} docker-compose.yml reads."""
    return set(VARIABLE.findall(COMPOSE_FILE.read_text()))


def run_config(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` on a copy of the file in `folder`, with `env` as its .env and
    nothing of the caller's environment that Compose would read."""
    tool = shutil.which("docker-compose")
    assert tool, "Debian's docker-compose is missing: run `make system`"
    shutil.copy(COMPOSE_FILE, folder / "docker-compose.yml")
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    read_by_compose = file_variables() | {"COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}
    clean = {k: v for k, v in os.environ.items() if k not in read_by_compose}
    return subprocess.run(
        [
            tool,
            "--project-directory",
            str(folder),
            "-f",
            str(folder / "docker-compose.yml"),
            "config",
        ],
        env=clean,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def compose_config(env: dict[str, str], folder: Path) -> dict[str, Any]:
    """The file as Compose resolves it (variables, anchors, defaults), or an assertion with
    Compose's own complaint."""
    result = run_config(env, folder)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


def raw_file() -> dict[str, Any]:
    """The file as written (extension fields such as x-no-healthcheck kept)."""
    parsed: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return parsed


def command_line(service: dict[str, Any], key: str = "command") -> str:
    command = service.get(key) or ""
    return command if isinstance(command, str) else " ".join(command)


def published(port: str | dict[str, Any]) -> tuple[str, str, int]:
    """(host address, host port, container port) of a published port: docker-compose 1.29
    (Debian 12) writes "[address:]published:target[/protocol]" when an address is given and an
    object otherwise; 2.x (Debian 13) always an object (`host_ip`, `published`, `target`)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", "")), int(port["target"])
    *host, target = port.split("/")[0].split(":")
    address, host_port = ["", "", *host][-2:]
    return address, host_port, int(target)


def mount(volume: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a service's volume: docker-compose 1.29 (Debian 12) writes it as
    "source:target[:mode]", 2.x (Debian 13) as an object with `source` and `target`."""
    if isinstance(volume, dict):
        return str(volume.get("source", "")), str(volume["target"])
    source, target = volume.split(":")[:2]
    return source, target


def read_only(volume: str | dict[str, Any]) -> bool:
    """Whether a service's volume is mounted read-only, as either docker-compose writes it."""
    if isinstance(volume, dict):
        return bool(volume.get("read_only"))
    return volume.split(":")[2:3] == ["ro"]


def secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """secret name → its path in the container (/run/secrets/<target or name>)."""
    targets = {}
    for entry in service.get("secrets") or []:
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target") or source
        targets[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return targets


def networks_of(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    return set(networks)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped, continuation lines joined."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def image_environment(dockerfile: Path) -> dict[str, str]:
    """The ENV an image built from `dockerfile` starts with (KEY=value pairs; no $expansion
    but of what the file set before)."""
    env: dict[str, str] = {}
    for name, args in dockerfile_instructions(dockerfile):
        if name == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value)
    return env
