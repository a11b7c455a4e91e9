"""docker-compose.yml run the way Docker would lay it out, without a Docker engine.

From the file as `docker-compose config` resolves it: one network namespace per service, one
bridge per compose network (in the lab's `host` namespace, which stands for the Docker host),
each service attached to exactly the networks the file gives it (at the address it names, if
any) and resolving exactly the services it shares a network with, by name (its /etc/hosts, as
Docker's DNS would answer); its volumes, bind mounts and secrets mounted where the file says;
its environment as the file gives it; published ports forwarded from the host namespace to the
container, as Docker's proxy does, and nothing else reachable from there. Services start in the
order of their depends_on conditions (started, healthy, completed successfully), health being
the file's own check where the program it runs is here.

What runs in each namespace:
- ours (the Dockerfile's image): this checkout, mounted at /app as in the image, with the
  command and the image's entrypoint (scripts/container-entrypoint) the file gives;
- the upstream images: the same programs from Debian, configured as their images configure
  them from the file's environment and secrets (`_Adapter` subclasses below): PostgreSQL, MySQL
  (MariaDB), Redis, Orthanc with its PostgreSQL index (the orthancteam image's configuration
  rules), nginx on the production config; HAPI FHIR and OpenEMR as the stand-ins the local stack
  uses (servers/).

What it does not emulate, and says so: memory/CPU limits, restart policies, users inside our
image (ours run as root here: the venv's interpreter is under /root on these machines),
capabilities, log drivers, GPU reservations (the gpu profile is not started).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import pwd
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any, ClassVar

from common.settings import PROJECT_ROOT
from neuronova.node import node_executable
from neuronova.ohif import APP_CONFIG_PATH, ohif_root
from neuronova.sample import SAMPLE_PATIENT_ID
from neuronova.stack.nginx import find_nginx_binary
from tests.support.compose_file import (
    image_environment,
    mount,
    networks_of,
    published,
    secret_targets,
)
from tests.support.netns import Lab, LabError, Mount, Node
from tests.support.nginx_production import for_debian_nginx, nginx_version

# Our image's environment, as its Dockerfile sets it.
IMAGE_ENV = image_environment(PROJECT_ROOT / "Dockerfile")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Subnets for networks the file gives none (Docker picks from its pools; so do we).
AUTO_SUBNETS = tuple(f"10.231.{n}.0/24" for n in range(256))


def _unescape(text: str) -> str:
    return text.replace("$$", "$")  # `docker-compose config` keeps compose's $$ escapes


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [_unescape(part) for part in (shlex.split(value) if isinstance(value, str) else value)]


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    node: Node
    adapter: _Adapter
    mounts: list[Mount] = field(default_factory=list)
    secrets: dict[str, Path] = field(default_factory=dict)  # path in the container → host file

    @property
    def environment(self) -> dict[str, str]:
        return {k: _unescape(str(v)) for k, v in (self.spec.get("environment") or {}).items()}

    def volume_source(self, target: str) -> Path | None:
        for item in self.mounts:
            if item.target == target:
                return item.source
        return None


class ComposeLab:
    """The file's active services (those of no profile, or of one in `profiles`) in a Lab."""

    def __init__(
        self, config: dict[str, Any], project_dir: Path, home: Path, profiles: set[str]
    ) -> None:
        self.config = config
        self.project_dir = project_dir
        self.home = home
        self.profiles = profiles
        self.lab = Lab("nncc", home)
        self.services: dict[str, Service] = {}
        self._state: dict[str, str] = {}  # name → started | healthy | completed

    # ------------------------------------------------------------------ layout

    def active(self) -> dict[str, dict[str, Any]]:
        return {
            name: spec
            for name, spec in self.config["services"].items()
            if not spec.get("profiles") or set(spec["profiles"]) & self.profiles
        }

    def subnets(self) -> dict[str, str]:
        """Each network's subnet: the file's, else the next of AUTO_SUBNETS (by name)."""
        chosen: dict[str, str] = {}
        auto = iter(AUTO_SUBNETS)
        for name in sorted(self.config.get("networks") or {}):
            ipam = (self.config["networks"][name] or {}).get("ipam") or {}
            configured = [c["subnet"] for c in ipam.get("config") or [] if c.get("subnet")]
            chosen[name] = configured[0] if configured else next(auto)
        return chosen

    def gateway_of(self, network: str) -> str:
        """Where a connection published on the host comes from, as the container sees it."""
        return str(ipaddress.IPv4Network(self.subnets()[network]).network_address + 1)

    def lay_out(self) -> None:
        for name, subnet in self.subnets().items():
            self.lab.add_network(name, subnet)
        for name, spec in sorted(self.active().items()):
            node = self.lab.add_node(name)
            attachments = spec.get("networks") or {}
            if spec.get("network_mode") not in (None, "none"):
                raise LabError(f"{name}: network_mode {spec['network_mode']} is not laid out")
            for network in sorted(attachments):
                wanted = (attachments[network] or {}).get("ipv4_address")
                self.lab.attach(node, self.lab.networks[network], wanted)
            service = Service(name, spec, node, _adapter_for(spec))
            self.services[name] = service
        for service in self.services.values():
            self.lab.write_hosts(service.node, self._names_seen_by(service))
            service.mounts = self._mounts(service)
            self.lab.prepare_mountpoints(service.mounts)

    def _names_seen_by(self, service: Service) -> dict[str, ipaddress.IPv4Address]:
        names = {}
        for other in self.services.values():
            shared = sorted(networks_of(service.spec) & networks_of(other.spec))
            if shared:
                names[other.name] = other.node.addresses[shared[0]]
        return names

    def _mounts(self, service: Service) -> list[Mount]:
        mounts = [*self.lab.base_mounts(service.node), *_checkout_mounts()]
        for volume in service.spec.get("volumes") or []:
            source, target = mount(volume)
            read_only = isinstance(volume, str) and volume.endswith(":ro")
            if isinstance(volume, dict):
                read_only = bool(volume.get("read_only"))
            if source.startswith("/") or source.startswith("."):
                host = (self.project_dir / source).resolve()
                host.mkdir(parents=True, exist_ok=True)  # as Docker does for a missing bind
            else:
                host = self.home / "volumes" / source
                host.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(host, target, read_only))
        declared = self.config.get("secrets") or {}
        for name, target in secret_targets(service.spec).items():
            source = Path(declared[name]["file"])
            if not source.is_absolute():
                source = (self.project_dir / source).resolve()
            if not source.exists():
                raise LabError(f"{service.name}: secret {name} ({source}) does not exist")
            service.secrets[target] = source
            mounts.append(Mount(source, target, read_only=True))
        return mounts

    # ------------------------------------------------------------------ running

    def up(self, timeout_s: float = 600) -> None:
        """Everything active, in depends_on order, each condition waited for."""
        self.lay_out()
        self._publish_ports()
        deadline = time.monotonic() + timeout_s
        for name in sorted(self.services):
            self._ensure(name, "service_started", deadline, ())

    def _ensure(self, name: str, condition: str, deadline: float, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise LabError(f"depends_on cycle: {' → '.join((*chain, name))}")
        if name not in self.services:
            raise LabError(f"{chain[-1] if chain else '?'} depends on {name}, which is not active")
        if name not in self._state:
            for dependency, needs in (self.services[name].spec.get("depends_on") or {}).items():
                wanted = needs.get("condition", "service_started") if needs else "service_started"
                self._ensure(dependency, wanted, deadline, (*chain, name))
            service = self.services[name]
            service.adapter.start(self, service)
            self._state[name] = "started"
        if condition == "service_healthy":
            self._wait(name, self._healthy, deadline, "healthy")
        elif condition == "service_completed_successfully":
            self._wait(name, self._completed, deadline, "completed")

    def _wait(self, name: str, check: Any, deadline: float, what: str) -> None:
        if self._state[name] in (what, "completed"):
            return
        while time.monotonic() < deadline:
            process = self.lab.processes.get(name)
            if what == "healthy" and process is not None and process.poll() is not None:
                raise LabError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            if check(name):
                self._state[name] = what
                return
            time.sleep(1)
        raise LabError(f"{name} not {what} in time:\n{self.log_tail(name)}")

    def _healthy(self, name: str) -> bool:
        service = self.services[name]
        return service.adapter.healthy(self, service)

    def _completed(self, name: str) -> bool:
        process = self.lab.processes[name]
        if process.poll() is None:
            return False
        if process.returncode != 0:
            raise LabError(
                f"{name} (a one-shot) failed ({process.returncode}):\n{self.log_tail(name)}"
            )
        return True

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.home / "logs" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def _publish_ports(self) -> None:
        pairs = []
        for _name, service in sorted(self.services.items()):
            outside = [
                n
                for n in sorted(networks_of(service.spec))
                if not (self.config["networks"][n] or {}).get("internal")
            ]
            for port in service.spec.get("ports") or []:
                host_ip, host_port, target = published(port)
                if not outside:
                    continue  # Docker publishes nothing of a container on internal networks only
                address = service.node.addresses[outside[0]]
                pairs.append(f"{host_ip or '0.0.0.0'}:{host_port}={address}:{target}")
        if pairs:
            python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
            self.lab.start_in_host("ports", [python, "-m", "tests.support.port_forward", *pairs])

    def exec(
        self, name: str, argv: list[str], *, input_text: str | None = None, timeout_s: float = 120
    ) -> Any:
        """`docker compose exec NAME argv`: in the service's namespace, mounts, env and user."""
        service = self.services[name]
        return service.adapter.exec(self, service, argv, input_text, timeout_s)

    def stop(self, name: str) -> None:
        spec = self.services[name].spec
        stop_signal = getattr(signal, str(spec.get("stop_signal") or "SIGTERM"))
        self.lab.stop(name, stop_signal, grace_s=20)

    def down(self) -> None:
        # Reverse order of start, each with its stop signal (workers: SIGINT).
        for name in reversed(list(self._state)):
            try:
                self.stop(name)
            except Exception:  # close() below kills what is left
                pass
        self.lab.close()


# ---------------------------------------------------------------------- adapters


class _Adapter:
    """How one image's service is run here, and how its health is asked."""

    user: str | None = None

    def start(self, lab: ComposeLab, service: Service) -> None:
        raise NotImplementedError

    def env(self, service: Service) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "HOME": "/tmp"} | service.environment

    def healthy(self, lab: ComposeLab, service: Service) -> bool:
        """The file's own health check, run in the service as Docker runs it."""
        test = (service.spec.get("healthcheck") or {}).get("test")
        if not test or (service.spec.get("healthcheck") or {}).get("disable"):
            return True
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        kind, *rest = test
        argv = ["sh", "-c", _unescape(rest[0])] if kind == "CMD-SHELL" else _argv(rest)
        try:
            result = self.exec(lab, service, argv, None, 30)
        except Exception:  # a probe that hangs is an unhealthy answer
            return False
        return bool(result.returncode == 0)

    def exec(
        self,
        lab: ComposeLab,
        service: Service,
        argv: list[str],
        input_text: str | None,
        timeout_s: float,
    ) -> Any:
        return lab.lab.run(
            service.node,
            argv,
            env=self.env(service),
            mounts=service.mounts,
            user=self.user_of(service),
            cwd=self.cwd,
            input_text=input_text,
            timeout_s=timeout_s,
        )

    cwd: str | None = None

    def user_of(self, service: Service) -> str | None:
        return self.user

    def launch(self, lab: ComposeLab, service: Service, argv: list[str], **extra: Any) -> None:
        lab.lab.start(
            service.node,
            argv,
            env=extra.get("env", self.env(service)),
            mounts=service.mounts,
            user=extra.get("user", self.user_of(service)),
            cwd=extra.get("cwd", self.cwd),
        )


class _Ours(_Adapter):
    """Our image: this checkout at /app, the image's entrypoint, the file's command."""

    cwd = "/app"

    def env(self, service: Service) -> dict[str, str]:
        return IMAGE_ENV | service.environment

    def start(self, lab: ComposeLab, service: Service) -> None:
        self.launch(lab, service, self.entrypoint(service) + _argv(service.spec.get("command")))

    def entrypoint(self, service: Service) -> list[str]:
        given = _argv(service.spec.get("entrypoint"))
        return given or ["/app/scripts/container-entrypoint"]

    def exec(
        self,
        lab: ComposeLab,
        service: Service,
        argv: list[str],
        input_text: str | None,
        timeout_s: float,
    ) -> Any:
        # `docker compose exec` runs the command alone, not through the entrypoint: the
        # secrets' VAR_FILE are read by the entrypoint, so an exec'd CLI is given the same.
        return super().exec(lab, service, [*self.entrypoint(service), *argv], input_text, timeout_s)


def _checkout_mounts() -> list[Mount]:
    """The checkout at /app (where the image has its code) and, when it lies under /tmp or
    /run (which every node has its own of), at its own path too: the venv's scripts name their
    interpreter by that path. The second is bound from /app, the first, once the node's own
    /tmp hides the original (netns_launch binds in that order)."""
    mounts = [Mount(PROJECT_ROOT, "/app", read_only=True)]
    if PROJECT_ROOT.parts[:2] in {("/", "tmp"), ("/", "run")}:
        mounts.append(Mount(Path("/app"), str(PROJECT_ROOT), read_only=True))
    return mounts


class _Gateway(_Adapter):
    """The gateway image (nginx/Dockerfile) from Debian's nginx: the production config as the
    image has it (older nginx: tests/support/nginx_production.py), OHIF's dist with our
    app-config.js, the entrypoint script that writes the service credentials."""

    def start(self, lab: ComposeLab, service: Service) -> None:
        binary = find_nginx_binary()
        if binary is None:
            raise LabError("nginx not found: run `make system`")
        home = service.node.home
        config = for_debian_nginx(
            (PROJECT_ROOT / "nginx" / "nginx.conf").read_text(), nginx_version(binary)
        )
        (home / "nginx.conf").write_text(config)
        for folder in ("logs", "secrets"):
            (home / folder).mkdir(exist_ok=True)
        # The image's copy of OHIF is readable by nginx's workers; the local install is the
        # stack owner's alone (umask 077): a copy with the image's modes.
        ohif = home / "ohif"
        shutil.copytree(ohif_root(), ohif, dirs_exist_ok=True)
        for folder, _dirs, names in os.walk(ohif):
            os.chmod(folder, 0o755)
            for name in names:
                os.chmod(Path(folder) / name, 0o644)
        service.mounts += [
            Mount(home / "nginx.conf", "/etc/nginx/nginx.conf", read_only=True),
            Mount(PROJECT_ROOT / "nginx" / "snippets", "/etc/nginx/snippets", read_only=True),
            Mount(ohif, "/usr/share/nginx/ohif", read_only=True),
            Mount(APP_CONFIG_PATH, "/usr/share/nginx/ohif/app-config.js", read_only=True),
            Mount(home / "logs", "/var/log/nginx"),
            Mount(home / "secrets", "/etc/nginx/secrets"),
            Mount(PROJECT_ROOT / "nginx" / "service-auth.sh", "/docker-entrypoint.d/30-service-auth.sh", read_only=True),
        ]  # fmt: skip
        lab.lab.prepare_mountpoints(service.mounts)
        script = f"sh /docker-entrypoint.d/30-service-auth.sh && exec {binary} -g 'daemon off;'"
        self.launch(lab, service, ["sh", "-c", script])

    def healthy(self, lab: ComposeLab, service: Service) -> bool:
        # The image's probe is curl, which a bare Debian lacks: the same request from Python.
        probe = (
            "import ssl, urllib.request as u; c = ssl._create_unverified_context(); "
            "u.urlopen('https://127.0.0.1/healthz', timeout=5, context=c)"
        )
        return bool(self.exec(lab, service, [_python(), "-c", probe], None, 30).returncode == 0)


class _Postgres(_Adapter):
    """The postgres image: POSTGRES_DB/USER/PASSWORD(_FILE) make the cluster on first start."""

    user = "postgres"

    def env(self, service: Service) -> dict[str, str]:
        bins = sorted(glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise LabError("PostgreSQL not found: run `make system`")
        return super().env(service) | {"PATH": f"{bins[-1]}:{SYSTEM_PATH}"}

    def start(self, lab: ComposeLab, service: Service) -> None:
        data = service.volume_source("/var/lib/postgresql/data")
        assert data is not None, f"{service.name}: no volume at /var/lib/postgresql/data"
        account = pwd.getpwnam("postgres")
        os.chown(data, account.pw_uid, account.pw_gid)
        os.chmod(data, 0o700)
        script = """
set -eu
mkdir -p /var/run/postgresql
PGDATA=/var/lib/postgresql/data
password=${POSTGRES_PASSWORD:-$(cat "$POSTGRES_PASSWORD_FILE")}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\\n' "$password" > /tmp/pwfile
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-local=trust \
    --auth-host=scram-sha-256 >/dev/null
  rm /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \\"$POSTGRES_DB\\" OWNER \\"$POSTGRES_USER\\"" \
      | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
"""
        self.launch(lab, service, ["sh", "-c", script])


class _MySQL(_Adapter):
    """The mysql image from MariaDB: MYSQL_ROOT_PASSWORD, MYSQL_DATABASE, MYSQL_USER and
    MYSQL_PASSWORD (each also as _FILE) make the database and account on first start."""

    def _value(self, service: Service, name: str) -> str | None:
        env = service.environment
        if name in env:
            return env[name]
        if f"{name}_FILE" in env:
            return service.secrets[env[f"{name}_FILE"]].read_text().strip()
        return None

    def start(self, lab: ComposeLab, service: Service) -> None:
        data = service.volume_source("/var/lib/mysql")
        assert data is not None, f"{service.name}: no volume at /var/lib/mysql"
        account = pwd.getpwnam("mysql")
        os.chown(data, account.pw_uid, account.pw_gid)

        def quoted(text: str) -> str:
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

        statements = []
        root = self._value(service, "MYSQL_ROOT_PASSWORD")
        if root:
            statements.append(f"ALTER USER 'root'@'localhost' IDENTIFIED BY {quoted(root)};")
        database, user = self._value(service, "MYSQL_DATABASE"), self._value(service, "MYSQL_USER")
        password = self._value(service, "MYSQL_PASSWORD")
        if database:
            statements.append(f"CREATE DATABASE IF NOT EXISTS `{database}`;")
        if user and password:
            statements.append(
                f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY {quoted(password)};"
            )
            statements.append(f"ALTER USER '{user}'@'%' IDENTIFIED BY {quoted(password)};")
            if database:
                statements.append(f"GRANT ALL ON `{database}`.* TO '{user}'@'%';")
        init = service.node.home / "tmp" / "init.sql"
        init.write_text("\n".join(statements) + "\n")
        os.chown(init, account.pw_uid, account.pw_gid)
        os.chmod(init, 0o600)
        script = """
set -eu
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --no-defaults --user=mysql --datadir=/var/lib/mysql --skip-test-db \
    --auth-root-authentication-method=normal --force >/dev/null
fi
exec mariadbd --no-defaults --user=mysql --datadir=/var/lib/mysql --bind-address=0.0.0.0 \
  --port=3306 --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
  --skip-name-resolve --init-file=/tmp/init.sql
"""
        self.launch(lab, service, ["sh", "-c", script])


class _Redis(_Adapter):
    """The redis image: the file's entrypoint and command, as its user, with Debian's
    redis-server and redis-cli."""

    def user_of(self, service: Service) -> str | None:
        return str(service.spec.get("user") or "redis")

    def start(self, lab: ComposeLab, service: Service) -> None:
        argv = _argv(service.spec.get("entrypoint")) + _argv(service.spec.get("command"))
        self.launch(lab, service, argv or ["redis-server"])


class _Orthanc(_Adapter):
    """The orthancteam image from Debian's Orthanc and its PostgreSQL plugin, configured by the
    image's rules: every /etc/orthanc/*.json and /run/secrets/*.json merged, then each
    ORTHANC__SECTION__KEY variable (camel-cased; PostgreSQL's keys by its own names; a value
    read from /run/secrets/<name> for a …_SECRET variable), JSON values parsed."""

    SPECIAL: ClassVar[dict[str, str]] = {"POSTGRESQL": "PostgreSQL", "DICOM_WEB": "DicomWeb"}

    def user_of(self, service: Service) -> str | None:
        return str(service.spec.get("user") or "root")

    def configuration(self, service: Service) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        folder = service.volume_source("/etc/orthanc")
        for path in sorted(folder.glob("*.json")) if folder else []:
            _merge(merged, json.loads(path.read_text()))
        for target, source in sorted(service.secrets.items()):
            if target.endswith(".json"):
                _merge(merged, json.loads(source.read_text()))
        for name, value in sorted(service.environment.items()):
            if not name.startswith("ORTHANC__"):
                continue
            parts = name.removeprefix("ORTHANC__").split("__")
            if parts[-1].endswith("_SECRET"):
                parts[-1] = parts[-1].removesuffix("_SECRET")
                value = service.secrets[f"/run/secrets/{value}"].read_text().strip()
            keys = [
                self.SPECIAL.get(p) or "".join(w.capitalize() for w in p.split("_")) for p in parts
            ]
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                parsed = value
            node = merged
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = parsed
        plugins = [p for p in glob("/usr/share/orthanc/plugins/*DicomWeb*.so")]
        if "PostgreSQL" in merged:
            plugins += glob("/usr/share/orthanc/plugins/*PostgreSQLIndex*.so")
            merged["PostgreSQL"].setdefault("EnableIndex", True)
        merged.setdefault("DicomWeb", {}).setdefault("Enable", True)
        merged |= {
            "StorageDirectory": "/var/lib/orthanc/db",
            "IndexDirectory": "/var/lib/orthanc/db",
            "Plugins": plugins,
            "HttpPort": 8042,
            "DicomPort": 4242,
        }
        return merged

    def start(self, lab: ComposeLab, service: Service) -> None:
        files = service.volume_source("/var/lib/orthanc/db")
        assert files is not None
        account = pwd.getpwnam(self.user_of(service) or "root")
        os.chown(files, account.pw_uid, account.pw_gid)
        path = service.node.home / "tmp" / "orthanc.json"
        path.write_text(json.dumps(self.configuration(service), indent=2))
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, 0o600)
        self.launch(lab, service, ["Orthanc", "/tmp/orthanc.json"])

    def healthy(self, lab: ComposeLab, service: Service) -> bool:
        # The image's /probes/test-aliveness.py: /changes?last as the first registered user.
        users = self.configuration(service).get("RegisteredUsers") or {}
        user, password = next(iter(users.items()))
        probe = (
            "import sys, urllib.request as u; "
            "r = u.Request('http://127.0.0.1:8042/changes?last', "
            "headers={'Authorization': 'Basic ' + sys.argv[1]}); u.urlopen(r, timeout=5)"
        )
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        result = self.exec(lab, service, [_system_python(), "-c", probe, token], None, 30)
        return bool(result.returncode == 0)


class _Hapi(_Adapter):
    """HAPI FHIR (Java) cannot run here: the local stack's FHIR server (servers/fhir) at HAPI's
    address, http://<service>:8080/fhir."""

    def start(self, lab: ComposeLab, service: Service) -> None:
        server = PROJECT_ROOT / "servers" / "fhir" / "server.mjs"
        argv = [node_executable(), str(server), "--host", "0.0.0.0", "--port", "8080"]
        self.launch(lab, service, [*argv, "--base", "/fhir"])


class _OpenEmr(_Adapter):
    """OpenEMR (PHP from Packagist) cannot run here: the local stack's emulator of its API on
    port 80, with the user the file creates (OE_USER, the emr_password secret) and NeuroNova's
    API client (NEURONOVA_EMR_CLIENT_ID, the emr_client_secret secret, as an admin registers)."""

    def start(self, lab: ComposeLab, service: Service) -> None:
        ours = next(
            s
            for s in lab.services.values()
            if isinstance(s.adapter, _Ours) and s.secrets.get("/run/secrets/emr_client_secret")
        )
        credentials = {
            "client_id": ours.environment["NEURONOVA_EMR_CLIENT_ID"],
            "client_secret": ours.secrets["/run/secrets/emr_client_secret"].read_text().strip(),
            "username": service.environment["OE_USER"],
            "password": service.secrets["/run/secrets/emr_password"].read_text().strip(),
        }
        path = service.node.home / "tmp" / "emr-credentials.json"
        path.write_text(json.dumps(credentials))
        os.chmod(path, 0o600)
        argv = [_python(), "-m", "servers.emr.emulator", "--host", "0.0.0.0", "--port", "80"]
        argv += ["--credentials", "/tmp/emr-credentials.json"]
        argv += ["--sample-patient-id", SAMPLE_PATIENT_ID]
        self.launch(lab, service, argv, env={"PATH": SYSTEM_PATH, "PYTHONPATH": "/app"}, cwd="/app")

    def healthy(self, lab: ComposeLab, service: Service) -> bool:
        probe = "import urllib.request as u; u.urlopen('http://127.0.0.1/healthz', timeout=5)"
        return bool(self.exec(lab, service, [_python(), "-c", probe], None, 30).returncode == 0)


def _python() -> str:
    return str(PROJECT_ROOT / ".venv" / "bin" / "python")


def _system_python() -> str:
    """Debian's python3, for probes run as a service's own user (the venv's interpreter is
    under /root here, which other users cannot enter)."""
    return "/usr/bin/python3"


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _adapter_for(spec: dict[str, Any]) -> _Adapter:
    build = spec.get("build")
    if build:
        dockerfile = (build.get("dockerfile") if isinstance(build, dict) else None) or "Dockerfile"
        return _Gateway() if dockerfile.endswith("nginx/Dockerfile") else _Ours()
    image = str(spec.get("image", ""))
    for prefix, adapter in (
        ("postgres:", _Postgres),
        ("mysql:", _MySQL),
        ("redis:", _Redis),
        ("orthancteam/orthanc:", _Orthanc),
        ("hapiproject/hapi:", _Hapi),
        ("openemr/openemr:", _OpenEmr),
    ):
        if image.startswith(prefix):
            return adapter()
    raise LabError(f"no way to run image {image!r} here: add an adapter to compose_lab.py")


def listening(lab: ComposeLab, port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a TCP connection at host:port in the lab's host namespace."""
    probe = (
        "import socket, sys; s = socket.socket(); s.settimeout(3); "
        "sys.exit(s.connect_ex((sys.argv[1], int(sys.argv[2]))))"
    )
    return lab.lab.run_in_host([_python(), "-c", probe, host, str(port)]).returncode == 0
