"""The production compose file, as Debian's `docker-compose config` reads it (no Docker engine
runs here): the services a hospital deploys, who can reach whom, and no default secrets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
SECRETS = {
    "MYSQL_PASSWORD": "m" * 24,
    "MYSQL_ROOT_PASSWORD": "r" * 24,
    "PREFECT_DB_PASSWORD": "p" * 24,
    "FHIR_DB_PASSWORD": "f" * 24,
    "OPENEMR_DB_PASSWORD": "o" * 24,
    "NEURONOVA_JWT_SECRET": "j" * 40,
    "NEURONOVA_PUBLIC_URL": "https://neuronova.hospital.example",
    "NEURONOVA_EMR_CLIENT_ID": "client-id",
    "NEURONOVA_EMR_CLIENT_SECRET": "c" * 24,
    "NEURONOVA_EMR_USERNAME": "neuronova",
    "NEURONOVA_EMR_PASSWORD": "e" * 24,
    "ORTHANC_PASSWORD": "h" * 24,
    "REDIS_PASSWORD": "d" * 24,
    "PREFECT_AUTH_STRING": "a" * 32,
}


def _config(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    assert tool, "Debian's docker-compose is missing: run `make system`"
    shutil.copy(COMPOSE_FILE, folder / "docker-compose.yml")  # no .env of the developer's
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [
            tool,
            "--project-directory",
            str(folder),
            "-f",
            str(folder / "docker-compose.yml"),
            "config",
        ],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _config(SECRETS, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


def test_every_part_of_the_product_is_a_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "nginx",
        "webapp",
        "alerts",
        "orthanc",
        "mysql",
        "redis",
        "prefect-server",
        "prefect-db",
        "worker-cpu",
        "worker-gpu",
        "arrivals",
        "hapi-fhir",
        "fhir-db",
        "openemr",
    }
    services = config["services"]
    assert services["mysql"]["image"].startswith("mysql:8")
    assert (
        "postgresql"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert "--pool cpu" in _command(services["worker-cpu"])
    assert "--pool gpu" in _command(services["worker-gpu"])
    assert _command(services["arrivals"]).startswith("neuronova watch-arrivals")
    # Workers, the webapp and the alerts pool run the same image.
    assert all(
        "build" in services[name] for name in ("worker-cpu", "worker-gpu", "webapp", "alerts")
    )


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_the_gpu_worker_reserves_a_gpu(config: dict[str, Any]) -> None:
    devices = config["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "count": 1, "driver": "nvidia"}]
    assert config["services"]["worker-gpu"]["environment"]["NEURONOVA_INFERENCE_DEVICE"] == "cuda"


def test_only_nginx_publishes_ports_and_orthanc_is_unreachable_from_outside(
    config: dict[str, Any],
) -> None:
    services, networks = config["services"], config["networks"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx"}
    # Every network but the frontend is internal: no way in from outside but nginx.
    assert {name for name, n in networks.items() if not n.get("internal")} == {"frontend"}
    assert set(services["orthanc"]["networks"]) == {"pacs"}
    on_pacs = {name for name, s in services.items() if "pacs" in s.get("networks", {})}
    assert on_pacs == {"orthanc", "nginx", "worker-cpu", "worker-gpu", "arrivals"}  # not the webapp
    assert "frontend" in services["nginx"]["networks"]


def test_services_restart_and_ours_report_their_health(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {name for name, s in services.items() if s.get("restart") != "unless-stopped"} == set()
    ours = {name for name, s in services.items() if "build" in s}
    assert ours == {"webapp", "alerts", "worker-cpu", "worker-gpu", "arrivals", "nginx"}
    stateful = {"mysql", "prefect-db", "fhir-db", "redis", "prefect-server"}
    assert {name for name in ours | stateful if "healthcheck" not in services[name]} == set()
    for worker in ("worker-cpu", "worker-gpu"):
        service = services[worker]
        # The probe asks the worker's own webserver, which only --with-healthcheck starts.
        assert "--with-healthcheck" in _command(service)
        port = service["environment"]["PREFECT_WORKER_WEBSERVER_PORT"]
        assert f"127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
        # A worker that starts before the Prefect server answers would exit: it waits.
        needs = service["depends_on"]
        assert needs["prefect-server"]["condition"] == "service_healthy"
        assert needs["mysql"]["condition"] == "service_healthy"
    # The arrival watcher beats after every pass; its probe reads the beat's age.
    assert "--heartbeat /tmp/arrivals.heartbeat" in _command(services["arrivals"])
    assert "/tmp/arrivals.heartbeat" in " ".join(services["arrivals"]["healthcheck"]["test"])
    nginx_needs = services["nginx"]["depends_on"]
    assert nginx_needs["webapp"]["condition"] == "service_healthy"


def test_no_password_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|PASS|SECRET)[A-Za-z_.]*:\s*\S", line, re.IGNORECASE):
            assert "${" in line and ":?" in line, f"a secret without a required variable: {line}"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_compose_with_its_name(missing: str, tmp_path: Path) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = _config(env, tmp_path)
    assert result.returncode != 0
    assert missing in result.stderr


# --------------------------------------------------------------------------- the app image
# No engine builds it here: the Dockerfile is read as the builder would (continuation lines
# joined, one instruction per line) and held to what the services need of it at run time.

DOCKERFILE = PROJECT_ROOT / "Dockerfile"


def _instructions(path: Path) -> list[tuple[str, str]]:
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


def _copied_paths(instructions: list[tuple[str, str]]) -> set[str]:
    sources: set[str] = set()
    for name, args in instructions:
        if name == "COPY" and not args.startswith("--from"):
            sources.update(p.rstrip("/") for p in args.split()[:-1])
    return sources


def test_the_image_carries_every_package_and_the_model_the_services_load() -> None:
    from common.settings import Settings

    copied = _copied_paths(_instructions(DOCKERFILE))
    first_party = {
        entry.name
        for entry in PROJECT_ROOT.iterdir()
        if (entry / "__init__.py").exists() and entry.name not in {"tests", "bench"}
    }
    assert first_party - copied == set(), "packages the image lacks"
    # The gpu worker reads the bundle from its default place under the project.
    bundle = Settings().model_bundle_dir.resolve().relative_to(PROJECT_ROOT)
    assert bundle.parts[0] in copied, f"the image lacks the model bundle {bundle}"


def test_the_image_runs_as_its_own_user_and_can_write_its_data_dir(
    config: dict[str, Any],
) -> None:
    instructions = _instructions(DOCKERFILE)
    users = [args.strip() for name, args in instructions if name == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    run = " ".join(args for name, args in instructions if name == "RUN")
    data_dir = config["services"]["worker-cpu"]["environment"]["NEURONOVA_DATA_DIR"]
    # A named volume starts as a copy of the image's folder, ownership included.
    assert f"mkdir -p {data_dir}" in run and f"chown {users[-1]}:{users[-1]} {data_dir}" in run
    for service in ("worker-cpu", "worker-gpu"):
        mounts = [_mount(m) for m in config["services"][service]["volumes"]]
        assert any(
            target == data_dir and source in config["volumes"] for source, target in mounts
        ), f"{service}: {data_dir} is not a named volume"


def _mount(volume: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a service's volume: docker-compose 1.29 (Debian 12) writes it as
    "source:target[:mode]", 2.x (Debian 13) as an object with `source` and `target`."""
    if isinstance(volume, dict):
        return str(volume.get("source", "")), str(volume["target"])
    source, target = volume.split(":")[:2]
    return source, target


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        ("worker-data:/data", ("worker-data", "/data")),
        ("./secrets/tls:/etc/nginx/tls:ro", ("./secrets/tls", "/etc/nginx/tls")),
        ({"type": "volume", "source": "worker-data", "target": "/data"}, ("worker-data", "/data")),
    ],
    ids=["1.29", "1.29 with mode", "2.x"],
)
def test_mounts_read_the_same_from_either_docker_compose(
    volume: str | dict[str, Any], expected: tuple[str, str]
) -> None:
    assert _mount(volume) == expected


def test_the_image_ships_compiled_bytecode() -> None:
    # Its user cannot write /app: without this every flow run's new process compiles Prefect
    # and the flows before it starts.
    run = " ".join(args for name, args in _instructions(DOCKERFILE) if name == "RUN")
    assert re.search(r"uv sync [^&]*--compile-bytecode", run)
    assert "compileall" in run


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = {
        line.strip().strip("/")
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # The developer's environment, data and secrets never reach an image.
    assert {".venv", ".tools", ".cache", "var", ".git", "secrets", ".env"} <= ignored


def test_orthanc_demands_its_service_account_from_everyone(config: dict[str, Any]) -> None:
    """Its network is no trust boundary: Orthanc has authentication on, with the one account
    that the workers, the webapp and nginx's internal location present."""
    services = config["services"]
    orthanc_env = services["orthanc"]["environment"]
    assert orthanc_env["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    users = json.loads(orthanc_env["ORTHANC__REGISTERED_USERS"])
    assert users == {"neuronova": SECRETS["ORTHANC_PASSWORD"]}
    for name in ("worker-cpu", "worker-gpu", "webapp", "alerts"):
        env = services[name]["environment"]
        assert env["NEURONOVA_ORTHANC_USERNAME"] == "neuronova", name
        assert env["NEURONOVA_ORTHANC_PASSWORD"] == SECRETS["ORTHANC_PASSWORD"], name
    assert services["nginx"]["environment"]["ORTHANC_PASSWORD"] == SECRETS["ORTHANC_PASSWORD"]
    dockerfile = (PROJECT_ROOT / "nginx" / "Dockerfile").read_text()
    assert "/docker-entrypoint.d/30-service-auth.sh" in dockerfile


def test_redis_demands_a_password_that_only_our_services_hold(config: dict[str, Any]) -> None:
    services = config["services"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    for name in ("worker-cpu", "worker-gpu", "webapp", "alerts"):
        url = services[name]["environment"]["NEURONOVA_REDIS_URL"]
        assert url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name


def test_the_prefect_server_serves_no_stranger(config: dict[str, Any]) -> None:
    services = config["services"]
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == SECRETS["PREFECT_AUTH_STRING"]
    assert server["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert server["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == SECRETS["NEURONOVA_PUBLIC_URL"]
    for name in ("worker-cpu", "worker-gpu", "webapp", "alerts"):
        env = services[name]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == SECRETS["PREFECT_AUTH_STRING"], name
    assert services["nginx"]["environment"]["PREFECT_AUTH_STRING"] == SECRETS["PREFECT_AUTH_STRING"]
