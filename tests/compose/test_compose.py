"""The production compose file as Compose reads it (Debian's `docker-compose config`; no Docker
engine runs here): the services a hospital deploys, who can reach whom, secrets only as files,
and the static rules every service keeps (names it can resolve, variables .env.example lists,
images pinned by digest, health checks, log rotation, no privileges). scripts/compose-check
runs the same file end to end (tests/compose/test_compose_check.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from common.settings import PROJECT_ROOT, Settings
from neuronova.compose_secrets import SECRET_FILES
from neuronova.heartbeat import heartbeat_limit_s
from neuronova.orthanc_config import TLS_DIR, dicom_config
from tests.support.compose_file import (
    COMPOSE_FILE,
    command_line,
    compose_config,
    dockerfile_instructions,
    env_example,
    file_variables,
    mount,
    networks_of,
    published,
    raw_file,
    read_only,
    run_config,
    secret_targets,
)

ENV = env_example()
MODALITIES = ENV["NEURONOVA_DICOM_MODALITIES"]
ONE_SHOTS = {"orthanc-config", "deploy"}
OURS = {
    "webapp",
    "alerts",
    "worker-cpu",
    "worker-gpu",
    "worker-inference-cpu",
    "arrivals",
    "deploy",
    "orthanc-config",
    "prefect-server",
}


# Every profile on: Compose 2.x (Debian 13) leaves the services of inactive profiles out of
# `config`, 1.29 (Debian 12) lists them all.
ALL_PROFILES = ",".join(
    sorted({p for s in raw_file()["services"].values() for p in s.get("profiles", [])})
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(
        ENV | {"COMPOSE_PROFILES": ALL_PROFILES}, tmp_path_factory.mktemp("compose")
    )


def test_every_part_of_the_product_is_a_service(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == OURS | {
        "nginx",
        "orthanc",
        "orthanc-db",
        "mysql",
        "redis",
        "prefect-db",
        "hapi-fhir",
        "fhir-db",
        "openemr",
        "openemr-db",
    }
    assert services["mysql"]["image"].startswith("mysql:8")
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_DRIVER"] == (
        "postgresql+asyncpg"
    )
    assert "--pool cpu" in command_line(services["worker-cpu"])
    assert "--pool gpu" in command_line(services["worker-gpu"])
    assert "--pool gpu" in command_line(services["worker-inference-cpu"])
    assert command_line(services["arrivals"]).startswith("neuronova watch-arrivals")
    # Ours run one image, built from this checkout; the Prefect server is ours too, so that
    # server and clients are one Prefect version by construction.
    images = {services[name]["image"] for name in OURS}
    assert len(images) == 1 and all("build" in services[name] for name in OURS)


def test_the_webapp_reaches_orthanc_and_the_clinical_systems(config: dict[str, Any]) -> None:
    """The blocker of issue 29: the gate and STOW-RS talk to Orthanc itself."""
    services = config["services"]
    for name in ("webapp", "alerts"):
        assert networks_of(services[name]) & networks_of(services["orthanc"]), name
    assert "clinical" in networks_of(services["webapp"])


def test_a_one_shot_registers_what_the_workers_need_before_they_start(
    config: dict[str, Any],
) -> None:
    """The other blocker: nothing registered the deployments. `deploy` migrates the database,
    then registers pools, deployments and the automation, after the Prefect server and the
    database are healthy; everything that needs them waits for it to have succeeded."""
    services = config["services"]
    deploy = services["deploy"]
    assert command_line(deploy) == "neuronova deploy --migrate"
    assert deploy["restart"] == "no"
    assert deploy["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert deploy["depends_on"]["mysql"]["condition"] == "service_healthy"
    for name in ("worker-cpu", "worker-gpu", "worker-inference-cpu", "arrivals", "webapp"):
        needs = services[name]["depends_on"]
        assert needs["deploy"]["condition"] == "service_completed_successfully", name


def test_stuck_components_look_stuck(config: dict[str, Any]) -> None:
    services = config["services"]
    # The watcher's health is its last pass handing studies on (neuronova/heartbeat.py).
    test = services["arrivals"]["healthcheck"]["test"]
    assert test[:5] == ["CMD", "python", "-m", "neuronova.heartbeat", "/tmp/arrivals.heartbeat"]
    poll_s = Settings().arrivals_poll_s  # the default: compose does not change it
    assert float(test[5]) >= heartbeat_limit_s(poll_s)
    # The webapp's probe asks /api/health, which answers 503 while Orthanc does not answer
    # (tests/gateway: test_health_follows_orthanc).
    assert "/api/health" in " ".join(services["webapp"]["healthcheck"]["test"])


def test_the_gpu_worker_is_a_profile_and_the_cpu_reads_without_one(config: dict[str, Any]) -> None:
    services = config["services"]
    gpu, cpu = services["worker-gpu"], services["worker-inference-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "count": 1, "driver": "nvidia"}]
    assert gpu["environment"]["NEURONOVA_INFERENCE_DEVICE"] == "cuda"
    assert gpu["profiles"] == ["gpu"]
    assert cpu["environment"]["NEURONOVA_INFERENCE_DEVICE"] == "cpu"
    assert cpu["profiles"] == ["cpu-inference"]
    assert "cpu-inference" in ENV["COMPOSE_PROFILES"].split(",")


def test_only_nginx_and_orthancs_dicom_port_are_published(config: dict[str, Any]) -> None:
    services, networks = config["services"], config["networks"]
    assert {name for name, s in services.items() if s.get("ports")} == {"nginx", "orthanc"}
    # Docker publishes per container: Orthanc's HTTP (8042) must not be among its ports.
    assert [published(port)[2] for port in services["orthanc"]["ports"]] == [4242]
    assert sorted(published(port)[2] for port in services["nginx"]["ports"]) == [80, 443]
    # Internal, but for nginx's frontend, the modalities' and the one to the clinical systems.
    assert {name for name, n in networks.items() if not n.get("internal")} == {
        "frontend",
        "modalities",
        "clinical",
    }
    on = {net: {n for n, s in services.items() if net in networks_of(s)} for net in networks}
    assert on["modalities"] == {"orthanc"}
    assert on["frontend"] == {"nginx"}
    # Each database on a network of its own with the one service that uses it.
    assert on["orthanc-index"] == {"orthanc", "orthanc-db"}
    assert on["prefect-index"] == {"prefect-server", "prefect-db"}
    assert on["fhir-index"] == {"hapi-fhir", "fhir-db"}
    assert on["emr-index"] == {"openemr", "openemr-db"}
    # Orthanc's HTTP is reached by our services and, on a network of their own, nginx's
    # internal location; nginx and the webapp share one network only (X-Real-IP is believed
    # from nginx's address on it).
    assert on["gateway-pacs"] == {"orthanc", "nginx"}
    assert networks_of(services["nginx"]) & networks_of(services["webapp"]) == {"web"}
    assert on["pacs"] == {
        "orthanc",
        "webapp",
        "alerts",
        "worker-cpu",
        "worker-gpu",
        "worker-inference-cpu",
        "arrivals",
    }


def test_host_ports_addresses_and_the_subnet_come_from_env(tmp_path: Path) -> None:
    env = ENV | {
        "COMPOSE_PROFILES": ALL_PROFILES,
        "NEURONOVA_DICOM_PORT": "104",
        "NEURONOVA_DICOM_BIND": "10.20.0.5",
        "NEURONOVA_HTTPS_PORT": "8443",
        "NEURONOVA_WEB_SUBNET": "10.99.7.0/24",
        "NEURONOVA_NGINX_WEB_ADDRESS": "10.99.7.10",
    }
    parsed = compose_config(env, tmp_path)
    services = parsed["services"]
    assert [published(port) for port in services["orthanc"]["ports"]] == [
        ("10.20.0.5", "104", 4242)
    ]
    assert ("0.0.0.0", "8443", 443) in [published(port) for port in services["nginx"]["ports"]]
    assert parsed["networks"]["web"]["ipam"]["config"] == [{"subnet": "10.99.7.0/24"}]
    assert services["nginx"]["networks"]["web"]["ipv4_address"] == "10.99.7.10"
    trusted = json.loads(services["webapp"]["environment"]["NEURONOVA_TRUSTED_PROXIES"])
    assert trusted == ["10.99.7.10"]


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
    assert published(port) == expected


def test_the_hospitals_fhir_and_emr_come_from_env(tmp_path: Path) -> None:
    env = ENV | {
        "NEURONOVA_FHIR_URL": "https://fhir.hospital.example/r4",
        "NEURONOVA_EMR_URL": "https://emr.hospital.example",
        "COMPOSE_PROFILES": "cpu-inference",
    }
    services = compose_config(env, tmp_path)["services"]
    for name in ("worker-cpu", "webapp", "arrivals"):
        environment = services[name]["environment"]
        assert environment["NEURONOVA_FHIR_URL"] == "https://fhir.hospital.example/r4"
        assert environment["NEURONOVA_EMR_URL"] == "https://emr.hospital.example"
    raw = raw_file()["services"]
    bundled = {name for name, s in raw.items() if "bundled-clinical" in s.get("profiles", [])}
    # Left out (2.x leaves them out of `config`; 1.29 lists them, marked by their profile).
    assert all("bundled-clinical" in services[name]["profiles"] for name in bundled & set(services))
    assert bundled == {"hapi-fhir", "fhir-db", "openemr", "openemr-db"}


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
    # The same secret on both sides: a file the image reads (…_SECRET names it).
    assert env["ORTHANC__POSTGRESQL__PASSWORD_SECRET"] == "orthanc_db_password"
    assert secret_targets(orthanc)["orthanc_db_password"] == "/run/secrets/orthanc_db_password"
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/orthanc_db_password"
    holders = {name for name, s in services.items() if "orthanc_db_password" in secret_targets(s)}
    assert holders == {"orthanc", "orthanc-db"}
    assert not db.get("ports")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert orthanc["depends_on"]["orthanc-db"]["condition"] == "service_healthy"
    assert ("orthanc-files", "/var/lib/orthanc/db") in map(mount, orthanc["volumes"])
    assert ("orthanc-index", "/var/lib/postgresql/data") in map(mount, db["volumes"])


def test_the_archive_survives_down_with_volumes(config: dict[str, Any]) -> None:
    """`docker compose down -v` removes a project's volumes, never external ones: the archive
    (Orthanc's files and index) and our database are created once, at install."""
    volumes = config["volumes"]
    for name in ("orthanc-files", "orthanc-index", "neuronova-db"):
        assert volumes[name].get("external") in (True, {"name": volumes[name].get("name")})
        assert volumes[name]["name"].startswith(ENV["NEURONOVA_ARCHIVE_VOLUME_PREFIX"])
    # The others have fixed names too, whatever the folder is called.
    assert all(volume.get("name") for volume in volumes.values())


def test_the_modality_list_is_configuration_read_once_before_orthanc(
    config: dict[str, Any],
) -> None:
    """NEURONOVA_DICOM_MODALITIES, the local stack's setting, written by our own code into
    Orthanc's configuration folder; Orthanc starts only once that succeeded."""
    services = config["services"]
    writer, orthanc = services["orthanc-config"], services["orthanc"]
    command = command_line(writer).split()
    assert command[:3] == ["python", "-m", "neuronova.orthanc_config"]
    assert json.loads(writer["environment"]["NEURONOVA_DICOM_MODALITIES"]) == json.loads(MODALITIES)
    assert orthanc["depends_on"]["orthanc-config"]["condition"] == "service_completed_successfully"
    assert writer["network_mode"] == "none"
    output = Path(command[3])
    writes = {
        source for source, target in map(mount, writer["volumes"]) if target == str(output.parent)
    }
    assert output.suffix == ".json" and writes == {"orthanc-config"}
    reads = [v for v in orthanc["volumes"] if mount(v) == ("orthanc-config", "/etc/orthanc")]
    assert len(reads) == 1 and read_only(reads[0])


def test_a_single_quoted_modality_list_in_env_reaches_the_writer_as_json(tmp_path: Path) -> None:
    # The way docs/operations.md tells operators to write it: single quotes keep the JSON as is.
    env = ENV | {"NEURONOVA_DICOM_MODALITIES": f"'{MODALITIES}'"}
    writer = compose_config(env, tmp_path)["services"]["orthanc-config"]
    assert json.loads(writer["environment"]["NEURONOVA_DICOM_MODALITIES"]) == json.loads(MODALITIES)


@pytest.mark.parametrize(("switch", "tls"), [(None, False), ("false", False), ("true", True)])
def test_dicom_tls_is_off_unless_env_switches_it_on(
    switch: str | None, tls: bool, tmp_path: Path
) -> None:
    env = {k: v for k, v in ENV.items() if k != "NEURONOVA_DICOM_TLS"}
    services = compose_config(env | ({"NEURONOVA_DICOM_TLS": switch} if switch else {}), tmp_path)[
        "services"
    ]
    assert command_line(services["orthanc-config"]).split()[-2:] == [
        "--dicom-tls",
        str(tls).lower(),
    ]
    mounts = [v for v in services["orthanc"]["volumes"] if mount(v)[1] == str(TLS_DIR)]
    assert len(mounts) == 1 and read_only(mounts[0])
    assert Path(mount(mounts[0])[0]).parts[-2:] == ("secrets", "dicom-tls")


def test_the_written_tls_options_point_into_the_mounted_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from common.settings import Settings

    monkeypatch.chdir(tmp_path)  # no developer's .env
    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", MODALITIES)
    written = dicom_config(Settings(), tls=True)
    paths = [v for k, v in written.items() if k.startswith("DicomTls") and isinstance(v, str)]
    assert len(paths) == 3
    assert all(Path(p).parent == Path(str(TLS_DIR)) for p in paths)


def test_services_restart_and_workers_stop_gracefully(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {n for n, s in services.items() if s.get("restart") != "unless-stopped"} == ONE_SHOTS
    assert all(services[name]["restart"] == "no" for name in ONE_SHOTS)
    for name in ("worker-cpu", "worker-gpu", "worker-inference-cpu"):
        worker = services[name]
        # SIGINT: the worker stops polling and lets its runs end; SIGTERM crashes them.
        assert worker["stop_signal"] == "SIGINT", name
        assert _seconds(worker["stop_grace_period"]) >= 60, name
        assert "--with-healthcheck" in command_line(worker)
        assert re.search(r"--limit \d+", command_line(worker)), name
        port = worker["environment"]["PREFECT_WORKER_WEBSERVER_PORT"]
        assert f"127.0.0.1:{port}/health" in " ".join(worker["healthcheck"]["test"])
    limit = re.search(r"--limit (\d+)", command_line(services["worker-cpu"]))
    assert limit is not None
    arrivals = services["arrivals"]["environment"]
    assert arrivals["NEURONOVA_ARRIVALS_MAX_IN_FLIGHT"] == limit.group(1)
    assert services["nginx"]["depends_on"]["webapp"]["condition"] == "service_healthy"


def _seconds(duration: str | int) -> float:
    text, total = str(duration), 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text) or [(text, "s")]:
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


# ----------------------------------------------------------------------- static rules, per issue 29


def _long_running(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if name not in ONE_SHOTS}


def test_every_host_a_service_names_shares_a_network_with_it(config: dict[str, Any]) -> None:
    """A URL or host in a service's environment names a service it can reach, as Docker's DNS
    would answer it: on a network they share."""
    services = config["services"]
    problems = []
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            for host in _hosts_named(str(value)):
                if host not in services:
                    continue  # an outside system (the hospital's), reached through `clinical`
                if not networks_of(service) & networks_of(services[host]):
                    problems.append(f"{name}: {key} names {host}, on no network it shares")
    assert problems == []
    # And the ones nginx's configuration names.
    nginx_conf = (PROJECT_ROOT / "nginx" / "nginx.conf").read_text()
    for host in re.findall(r"server ([a-z-]+):\d+", nginx_conf):
        assert networks_of(services["nginx"]) & networks_of(services[host]), host


def _hosts_named(value: str) -> set[str]:
    hosts = {urlparse(url).hostname or "" for url in re.findall(r"[a-z+]+://[^\s\"',]+", value)}
    if re.fullmatch(r"[a-z][a-z0-9-]*", value):
        hosts.add(value)  # a bare host name (MYSQL_HOST: openemr-db)
    return {h for h in hosts if h}


def test_every_variable_is_in_env_example() -> None:
    missing = file_variables() - set(ENV)
    assert missing == set(), f"add to .env.example, with its meaning: {sorted(missing)}"
    # Each with a comment saying what it is (the line or block above it).
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("#") or "=" in lines[index - 1], line


def test_every_image_is_pinned_by_digest(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        if "build" in service:
            continue  # built from the Dockerfiles below
        assert re.search(r":[\w.-]+@sha256:[0-9a-f]{64}$", service["image"]), name
    for dockerfile in (PROJECT_ROOT / "Dockerfile", PROJECT_ROOT / "nginx" / "Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                assert re.search(r":[\w.-]+@sha256:[0-9a-f]{64}", line), f"{dockerfile}: {line}"


def test_every_long_running_service_has_a_health_check_and_rotated_logs(
    config: dict[str, Any],
) -> None:
    raw = raw_file()["services"]
    for name, service in _long_running(config["services"]).items():
        check = service.get("healthcheck") or {}
        if check.get("disable"):
            # Only with the reason said in the file.
            assert raw[name].get("x-no-healthcheck"), f"{name}: health check off without reason"
        else:
            assert check.get("test"), f"{name}: no health check"
        options = (service.get("logging") or {}).get("options") or {}
        assert options.get("max-size") and options.get("max-file"), f"{name}: logs not rotated"
    for name in ONE_SHOTS:
        assert config["services"][name]["logging"]["options"]["max-size"]


def test_no_service_gains_privileges_and_each_is_bounded(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        if name not in ONE_SHOTS:
            assert service.get("mem_limit"), f"{name}: no memory limit"
    # Non-root where the image allows: ours (the image's USER), Orthanc's and Redis's own users.
    assert config["services"]["orthanc"]["user"] == "orthanc"
    assert config["services"]["redis"]["user"] == "redis"


def test_secrets_are_files_never_values(config: dict[str, Any]) -> None:
    """No password in the environment or a URL: each service names its secret files, and our
    image's entrypoint reads VAR_FILE into VAR (a `/` or `@` in a password then breaks nothing)."""
    declared = set(config["secrets"])
    assert declared == {s.name.removesuffix(".json").replace("-", "_") for s in SECRET_FILES}
    for name, service in config["services"].items():
        targets = set(secret_targets(service).values())
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_FILE") or key.endswith("_SECRET"):
                path = value if key.endswith("_FILE") else f"/run/secrets/{value}"
                assert path in targets, f"{name}: {key} names {path}, which it is not given"
            elif re.search(r"PASSWORD|PASS\b|SECRET|AUTH_STRING", key):
                pytest.fail(f"{name}: {key} holds a secret in the environment")
            assert not re.search(r"://[^/\s:@]+:[^@\s]+@", str(value)), (
                f"{name}: {key} has a password"
            )
    text = COMPOSE_FILE.read_text()
    assert "requirepass" in text and "$$(cat /run/secrets/redis_password)" in text


def test_production_settings_refuse_what_the_demo_stands_in_with(config: dict[str, Any]) -> None:
    for name in OURS - {"orthanc-config", "prefect-server"}:
        environment = config["services"][name]["environment"]
        assert environment["NEURONOVA_ENVIRONMENT"] == "production", name
        assert environment["NEURONOVA_DATABASE_URL"].startswith("mysql+pymysql://"), name
        assert environment["NEURONOVA_REDIS_URL"].startswith("redis://"), name


@pytest.mark.parametrize(
    "missing",
    [
        "NEURONOVA_PUBLIC_URL",
        "NEURONOVA_DICOM_MODALITIES",
        "NEURONOVA_VERSION",
        "NEURONOVA_EMR_CLIENT_ID",
    ],
)
def test_a_missing_setting_stops_compose_with_its_name(missing: str, tmp_path: Path) -> None:
    result = run_config({k: v for k, v in ENV.items() if k != missing}, tmp_path)
    assert result.returncode != 0
    assert missing in result.stderr


# --------------------------------------------------------------------------- the app image
# No engine builds it here: the Dockerfile is read as the builder would (continuation lines
# joined, one instruction per line) and held to what the services need of it at run time.

DOCKERFILE = PROJECT_ROOT / "Dockerfile"


def _copied_paths(instructions: list[tuple[str, str]]) -> set[str]:
    sources: set[str] = set()
    for name, args in instructions:
        if name == "COPY" and not args.startswith("--from"):
            sources.update(p.rstrip("/") for p in args.split()[:-1])
    return sources


def test_the_image_carries_every_package_and_the_model_the_services_load() -> None:
    from common.settings import Settings

    copied = _copied_paths(dockerfile_instructions(DOCKERFILE))
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
    instructions = dockerfile_instructions(DOCKERFILE)
    users = [args.strip() for name, args in instructions if name == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    run = " ".join(args for name, args in instructions if name == "RUN")
    data_dir = config["services"]["worker-cpu"]["environment"]["NEURONOVA_DATA_DIR"]
    # A named volume starts as a copy of the image's folder, ownership included.
    assert f"mkdir -p {data_dir}" in run and f"chown {users[-1]}:{users[-1]} {data_dir}" in run
    for service in ("worker-cpu", "worker-gpu", "webapp"):
        mounts = [mount(m) for m in config["services"][service]["volumes"]]
        assert any(
            target == data_dir and source in config["volumes"] for source, target in mounts
        ), f"{service}: {data_dir} is not a named volume"


def test_the_image_ships_compiled_bytecode() -> None:
    # Its user cannot write /app: without this every flow run's new process compiles Prefect
    # and the flows before it starts.
    run = " ".join(args for name, args in dockerfile_instructions(DOCKERFILE) if name == "RUN")
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
