"""The production nginx config, really started (certificate, ports and upstreams moved to the
test's own): it answers only the public host name; any other Host gets 421 (DNS rebinding
reaches nothing), and the container's health check by address still works."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from neuronova.stack.nginx import NGINX_DIR, find_nginx_binary
from neuronova.stack.ports import free_ports
from tests.support.nginx_production import (
    for_debian_nginx,
    nginx_version,
    self_signed_certificate,
)

PUBLIC_HOST = "pacs.hospital.example"


@pytest.fixture
def production_nginx(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """nginx on the production config, on two free loopback ports (http, https)."""
    binary = find_nginx_binary()
    if binary is None:
        pytest.fail("nginx not found: run `make system`")
    http_port, https_port = free_ports(2)
    home = tmp_path / "nginx"
    shutil.copytree(NGINX_DIR / "snippets", home / "snippets")
    secrets = home / "secrets"
    _run_entrypoint_script(secrets)
    tls = home / "tls"
    tls.mkdir()
    self_signed_certificate(tls, PUBLIC_HOST)
    (home / "ohif").mkdir()
    config = (NGINX_DIR / "nginx.conf").read_text()
    for old, new in {
        "/etc/nginx/secrets/": f"{secrets}/",
        "/etc/nginx/tls/": f"{tls}/",
        "/var/run/nginx.pid": f"{home}/nginx.pid",
        "/var/log/nginx/": f"{home}/",
        "/usr/share/nginx/ohif": f"{home}/ohif",
    }.items():
        config = config.replace(old, new)
    config = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", config)
    config = re.sub(r"listen 80\b", f"listen 127.0.0.1:{http_port}", config)
    config = re.sub(r"listen 443\b", f"listen 127.0.0.1:{https_port}", config)
    # Nothing listens there: these tests never reach an upstream.
    config = re.sub(r"server [a-z-]+:\d+( resolve)?;", "server 127.0.0.1:9;", config)
    config = config.replace("http {", f"http {{\n    client_body_temp_path {home}/body;", 1)
    config = for_debian_nginx(config, nginx_version(binary))
    (home / "nginx.conf").write_text(config)
    args = [str(binary), "-p", str(home), "-c", str(home / "nginx.conf"), "-e", str(home / "e.log")]
    subprocess.run([*args, "-t", "-q"], check=True, capture_output=True)
    subprocess.run(args, check=True)
    try:
        _wait_listening(https_port)
        yield http_port, https_port
    finally:
        subprocess.run([*args, "-s", "quit"], check=False, capture_output=True)
        time.sleep(0.3)


def _run_entrypoint_script(secrets: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "ORTHANC_PASSWORD_FILE": str(_secret_file(secrets.parent, "orthanc_password", "o" * 24)),
        "PREFECT_AUTH_STRING": "admin:" + "p" * 24,
        "NEURONOVA_PUBLIC_URL": f"https://{PUBLIC_HOST}",
        "NEURONOVA_NGINX_SECRETS": str(secrets),
    }
    subprocess.run(["sh", str(NGINX_DIR / "service-auth.sh")], env=env, check=True)
    assert (secrets / "server-name.conf").read_text() == f"server_name {PUBLIC_HOST};\n"
    # The password read from its file, its newline left behind.
    header = base64.b64encode(b"neuronova:" + b"o" * 24).decode()
    assert f'"Basic {header}"' in (secrets / "service-authorization.conf").read_text()


def _secret_file(folder: Path, name: str, value: str) -> Path:
    # As compose hands it over: a file, with a trailing newline that must not reach the header.
    path = folder / name
    path.write_text(value + "\n")
    return path


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("the production nginx did not start listening")


def test_only_the_public_host_name_is_answered(production_nginx: tuple[int, int]) -> None:
    http_port, https_port = production_nginx
    with httpx.Client(verify=False, timeout=5) as client:
        for host in ("127.0.0.1", "attacker.example", "localhost", f"{PUBLIC_HOST}.evil.example"):
            answer = client.get(f"https://127.0.0.1:{https_port}/", headers={"Host": host})
            assert answer.status_code == 421, host
            plain = client.get(f"http://127.0.0.1:{http_port}/viewer", headers={"Host": host})
            assert plain.status_code == 421, host
        ours = client.get(f"https://127.0.0.1:{https_port}/healthz", headers={"Host": PUBLIC_HOST})
        assert ours.status_code == 200
        assert ours.headers["strict-transport-security"].startswith("max-age=")
        assert ours.headers["x-frame-options"] == "DENY"
        redirect = client.get(
            f"http://127.0.0.1:{http_port}/viewer?x=1", headers={"Host": PUBLIC_HOST}
        )
        assert redirect.status_code == 301
        assert redirect.headers["location"] == f"https://{PUBLIC_HOST}/viewer?x=1"
        # The container's health check asks by address, without a host name.
        probe = client.get(f"https://127.0.0.1:{https_port}/healthz")
        assert probe.status_code == 200


@pytest.mark.parametrize(
    "url", ["http://pacs.example", "https://pacs.example/path", "https://pacs.example:8443", ""]
)
def test_the_entrypoint_refuses_a_public_url_nginx_could_not_serve(
    url: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "ORTHANC_PASSWORD_FILE": str(_secret_file(tmp_path, "orthanc_password", "o" * 24)),
        "PREFECT_AUTH_STRING": "admin:" + "p" * 24,
        "NEURONOVA_PUBLIC_URL": url,
        "NEURONOVA_NGINX_SECRETS": str(tmp_path),
    }
    result = subprocess.run(
        ["sh", str(NGINX_DIR / "service-auth.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "NEURONOVA_PUBLIC_URL" in result.stderr
    assert not (tmp_path / "server-name.conf").exists()
