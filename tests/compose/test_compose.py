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
from neuronova.orthanc_config import TLS_DIR, dicom_config

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
    "ORTHANC_DB_PASSWORD": "g" * 24,
}
MODALITIES = '[{"aet": "CT_ROOM1", "host": "10.1.2.3", "port": 104}]'
# What compose cannot start without: the secrets, and who may C-STORE (no default makes sense
# in a hospital: the demo's storescu on 127.0.0.1 would be nobody inside a container).
REQUIRED = SECRETS | {"NEURONOVA_DICOM_MODALITIES": MODALITIES}
# Compose reads these from the environment: the developer's own values never reach these tests.
COMPOSE_VARIABLES = {
    *REQUIRED,
    "NEURONOVA_DICOM_TLS",
    "NEURONOVA_DICOM_PORT",
    "NEURONOVA_DICOM_BIND",
}


def _config(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    assert tool, "Debian's docker-compose is missing: run `make system`"
    shutil.copy(COMPOSE_FILE, folder / "docker-compose.yml")  # no .env of the developer's
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
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
    return _parsed(_config(REQUIRED, tmp_path_factory.mktemp("compose")))


def _parsed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


def test_every_part_of_the_product_is_a_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "nginx",
        "webapp",
        "alerts",
        "orthanc",
        "orthanc-config",
        "orthanc-db",
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
    # Workers, the webapp, the alerts pool and Orthanc's configuration run the same image.
    assert all(
        "build" in services[name]
        for name in ("worker-cpu", "worker-gpu", "webapp", "alerts", "orthanc-config")
    )


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_the_gpu_worker_reserves_a_gpu(config: dict[str, Any]) -> None:
    devices = config["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "count": 1, "driver": "nvidia"}]
    assert config["services"]["worker-gpu"]["environment"]["NEURONOVA_INFERENCE_DEVICE"] == "cuda"


def test_only_nginx_and_orthancs_dicom_port_are_published(config: dict[str, Any]) -> None:
    services, networks = config["services"], config["networks"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx", "orthanc"}
    # Docker publishes per container: Orthanc's HTTP (8042) must not be among its ports.
    assert [_published(port)[2] for port in services["orthanc"]["ports"]] == [4242]
    # Every network but nginx's frontend and the modalities' is internal; Orthanc alone is on
    # the modalities' network (a container on internal networks only publishes nothing).
    assert {name for name, n in networks.items() if not n.get("internal")} == {
        "frontend",
        "modalities",
    }
    assert set(services["orthanc"]["networks"]) == {"pacs", "modalities"}
    on_modalities = {name for name, s in services.items() if "modalities" in s.get("networks", {})}
    assert on_modalities == {"orthanc"}
    on_pacs = {name for name, s in services.items() if "pacs" in s.get("networks", {})}
    # Not the webapp; Orthanc's database is on Orthanc's network alone.
    assert on_pacs == {"orthanc", "orthanc-db", "nginx", "worker-cpu", "worker-gpu", "arrivals"}
    assert "frontend" in services["nginx"]["networks"]


def _published(port: str | dict[str, Any]) -> tuple[str, str, int]:
    """(host address, host port, container port) of a published port: docker-compose 1.29
    (Debian 12) writes "[address:]published:target[/protocol]" when an address is given and an
    object otherwise; 2.x (Debian 13) always an object (`host_ip`, `published`, `target`)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", "")), int(port["target"])
    *host, target = port.split("/")[0].split(":")
    address, published = ["", "", *host][-2:]
    return address, published, int(target)


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("0.0.0.0:4242:4242/tcp", ("0.0.0.0", "4242", 4242)),
        ("4242:4242", ("", "4242", 4242)),
        ({"published": 80, "target": 80}, ("", "80", 80)),
        (
            {"mode": "ingress", "host_ip": "10.0.0.5", "target": 4242, "published": "104"},
            ("10.0.0.5", "104", 4242),
        ),
    ],
    ids=["1.29 with address", "short", "1.29 object", "2.x"],
)
def test_ports_read_the_same_from_either_docker_compose(
    port: str | dict[str, Any], expected: tuple[str, str, int]
) -> None:
    assert _published(port) == expected


def test_the_dicom_port_and_its_host_address_come_from_env(tmp_path: Path) -> None:
    env = REQUIRED | {"NEURONOVA_DICOM_PORT": "104", "NEURONOVA_DICOM_BIND": "10.20.0.5"}
    orthanc = _parsed(_config(env, tmp_path))["services"]["orthanc"]
    assert [_published(port) for port in orthanc["ports"]] == [("10.20.0.5", "104", 4242)]


def test_orthanc_keeps_its_index_on_postgresql(config: dict[str, Any]) -> None:
    """The official image's PostgreSQL plugin, on a database of Orthanc's own, unlocked so that
    more Orthanc instances can share it; the DICOM files stay on Orthanc's volume."""
    services = config["services"]
    orthanc, db = services["orthanc"], services["orthanc-db"]
    env = orthanc["environment"]
    assert env["ORTHANC__POSTGRESQL__HOST"] == "orthanc-db"
    assert str(env["ORTHANC__POSTGRESQL__PORT"]) == "5432"
    assert env["ORTHANC__POSTGRESQL__ENABLE_INDEX"] == "true"
    assert env["ORTHANC__POSTGRESQL__ENABLE_STORAGE"] == "false"
    assert env["ORTHANC__POSTGRESQL__LOCK"] == "false"
    assert env["ORTHANC__DATABASE_SERVER_IDENTIFIER"]
    assert db["image"].startswith("postgres:")
    assert db["environment"]["POSTGRES_DB"] == env["ORTHANC__POSTGRESQL__DATABASE"]
    assert db["environment"]["POSTGRES_USER"] == env["ORTHANC__POSTGRESQL__USERNAME"]
    password = SECRETS["ORTHANC_DB_PASSWORD"]
    assert (
        db["environment"]["POSTGRES_PASSWORD"] == env["ORTHANC__POSTGRESQL__PASSWORD"] == password
    )
    # Nobody else holds that password, and the database is neither published nor reachable
    # from any other network.
    others = {name for name, s in services.items() if password in json.dumps(s)}
    assert others == {"orthanc", "orthanc-db"}
    assert not db.get("ports")
    assert set(db["networks"]) == {"pacs"}
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert orthanc["depends_on"]["orthanc-db"]["condition"] == "service_healthy"
    assert any(
        source == "orthanc-data" and target == "/var/lib/orthanc/db"
        for source, target in map(_mount, orthanc["volumes"])
    )
    assert any(
        source == "orthanc-db" and target == "/var/lib/postgresql/data"
        for source, target in map(_mount, db["volumes"])
    )


def test_the_modality_list_is_configuration_read_once_before_orthanc(
    config: dict[str, Any],
) -> None:
    """NEURONOVA_DICOM_MODALITIES, the local stack's setting, written by our own code into
    Orthanc's configuration folder; Orthanc starts only once that succeeded."""
    services = config["services"]
    writer, orthanc = services["orthanc-config"], services["orthanc"]
    command = _command(writer).split()
    assert command[:3] == ["python", "-m", "neuronova.orthanc_config"]
    assert writer["environment"]["NEURONOVA_DICOM_MODALITIES"] == MODALITIES
    assert orthanc["depends_on"]["orthanc-config"]["condition"] == "service_completed_successfully"
    # A one-shot, with no network at all.
    assert writer["restart"] == "no"
    assert writer["network_mode"] == "none"
    # It writes into the volume that Orthanc reads, read-only, as /etc/orthanc/*.json.
    output = Path(command[3])
    writes = {
        source for source, target in map(_mount, writer["volumes"]) if target == str(output.parent)
    }
    assert output.suffix == ".json" and writes == {"orthanc-config"}
    reads = [v for v in orthanc["volumes"] if _mount(v) == ("orthanc-config", "/etc/orthanc")]
    assert len(reads) == 1 and _read_only(reads[0])


def test_a_single_quoted_modality_list_in_env_reaches_the_writer_as_json(tmp_path: Path) -> None:
    # The way docs/operations.md tells operators to write it: single quotes keep the JSON as is.
    (tmp_path / ".env").write_text(f"NEURONOVA_DICOM_MODALITIES='{MODALITIES}'\n")
    env = {k: v for k, v in REQUIRED.items() if k != "NEURONOVA_DICOM_MODALITIES"}
    writer = _parsed(_config(env, tmp_path))["services"]["orthanc-config"]
    assert json.loads(writer["environment"]["NEURONOVA_DICOM_MODALITIES"]) == json.loads(MODALITIES)


@pytest.mark.parametrize(("switch", "tls"), [(None, False), ("false", False), ("true", True)])
def test_dicom_tls_is_off_unless_env_switches_it_on(
    switch: str | None, tls: bool, tmp_path: Path
) -> None:
    env = REQUIRED | ({"NEURONOVA_DICOM_TLS": switch} if switch else {})
    services = _parsed(_config(env, tmp_path))["services"]
    assert _command(services["orthanc-config"]).split()[-2:] == ["--dicom-tls", str(tls).lower()]
    # The certificates come from ./secrets/dicom-tls, mounted read-only where the written
    # configuration points.
    mounts = [v for v in services["orthanc"]["volumes"] if _mount(v)[1] == str(TLS_DIR)]
    assert len(mounts) == 1 and _read_only(mounts[0])
    assert Path(_mount(mounts[0])[0]).parts[-2:] == ("secrets", "dicom-tls")


def test_the_written_tls_options_point_into_the_mounted_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from common.settings import Settings

    monkeypatch.chdir(tmp_path)  # no developer's .env
    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", MODALITIES)
    written = dicom_config(Settings(), tls=True)
    paths = [
        value
        for key, value in written.items()
        if key.startswith("DicomTls") and isinstance(value, str)
    ]
    assert len(paths) == 3
    assert all(Path(p).parent == Path(str(TLS_DIR)) for p in paths)


ONE_SHOTS = {"orthanc-config"}


def test_services_restart_and_ours_report_their_health(config: dict[str, Any]) -> None:
    services = config["services"]
    # A one-shot runs once per `docker compose up` and exits; the rest restart unless stopped.
    assert {
        name for name, s in services.items() if s.get("restart") != "unless-stopped"
    } == ONE_SHOTS
    assert all(services[name]["restart"] == "no" for name in ONE_SHOTS)
    ours = {name for name, s in services.items() if "build" in s}
    assert ours == {
        "webapp",
        "alerts",
        "worker-cpu",
        "worker-gpu",
        "arrivals",
        "nginx",
        "orthanc-config",
    }
    stateful = {"mysql", "prefect-db", "fhir-db", "orthanc-db", "redis", "prefect-server"}
    long_lived = ours - ONE_SHOTS
    assert {name for name in long_lived | stateful if "healthcheck" not in services[name]} == set()
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


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_missing_secret_or_setting_stops_compose_with_its_name(
    missing: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
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


def _read_only(volume: str | dict[str, Any]) -> bool:
    """Whether a service's volume is mounted read-only, as either docker-compose writes it."""
    if isinstance(volume, dict):
        return bool(volume.get("read_only"))
    return volume.split(":")[2:3] == ["ro"]


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
