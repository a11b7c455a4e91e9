"""The nginx configs: gixy finds nothing in either, nginx accepts the rendered local one, and
the security-relevant directives are where they must be."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import Settings
from neuronova.stack.nginx import (
    NGINX_DIR,
    brotli_static_module,
    find_nginx_binary,
    render_nginx_config,
)

GIXY = Path(sys.executable).parent / "gixy"
SNIPPETS = NGINX_DIR / "snippets"


def _gixy(config: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [str(GIXY), "-f", "json", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr  # 1 means "issues found"
    issues: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return issues


@pytest.fixture(params=["brotli", "gzip only"])
def rendered_local(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The local template as the stack renders it, with snippets/ beside it: with Debian's
    brotli_static module (the stack installs it) and without (a machine that lacks it)."""
    brotli = None
    if request.param == "brotli":
        brotli = brotli_static_module()
        assert brotli is not None, "libnginx-mod-http-brotli-static is missing: run `make system`"
    # Fixed ports, not the session's random ones: gixy takes any listen port containing "443"
    # for a TLS listener (and then asks for ssl_protocols), which made this test flaky.
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        gateway_url="http://127.0.0.1:8080",
        webapp_url="http://127.0.0.1:8081",
        orthanc_url="http://127.0.0.1:8042",
    )
    home = tmp_path / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (home / "tmp" / sub).mkdir(parents=True)
    shutil.copytree(SNIPPETS, home / "snippets")
    ohif = tmp_path / "ohif"
    ohif.mkdir()
    (home / "nginx.conf").write_text(render_nginx_config(settings, home, ohif, brotli))
    return home / "nginx.conf"


@pytest.fixture
def production(tmp_path: Path) -> Path:
    home = tmp_path / "etc-nginx"
    shutil.copytree(SNIPPETS, home / "snippets")
    shutil.copy(NGINX_DIR / "nginx.conf", home / "nginx.conf")
    return home / "nginx.conf"


def test_gixy_finds_nothing_in_the_production_config(production: Path) -> None:
    assert _gixy(production) == []


def test_gixy_finds_nothing_in_the_local_config(rendered_local: Path) -> None:
    assert _gixy(rendered_local) == []


def test_nginx_accepts_the_rendered_local_config(rendered_local: Path) -> None:
    nginx = find_nginx_binary()
    assert nginx is not None, "nginx is missing: run `make system`"
    home = rendered_local.parent
    result = subprocess.run(
        [
            str(nginx),
            "-t",
            "-p",
            str(home),
            "-c",
            str(rendered_local),
            "-e",
            str(home / "error.log"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_rendered_config_has_no_placeholder_left(rendered_local: Path) -> None:
    text = rendered_local.read_text()
    assert "@" not in "".join(line.split("#")[0] for line in text.splitlines())
    assert "listen 127.0.0.1:" in text  # loopback only


def test_the_locations_keep_orthanc_internal_and_the_headers_strict() -> None:
    locations = (SNIPPETS / "neuronova-locations.conf").read_text()
    headers = (SNIPPETS / "security-headers.conf").read_text()
    internal = locations.split("location ^~ /_orthanc/ {", 1)[1].split("}", 1)[0]
    assert "internal;" in internal
    assert "proxy_pass_request_headers off;" in internal  # the token never reaches Orthanc
    assert "proxy_intercept_errors on;" in internal  # nor do Orthanc's error details leave
    # Only the gate sends nginx anywhere: neither Orthanc nor Prefect may.
    every_accel = "X-Accel-Redirect X-Accel-Expires X-Accel-Limit-Rate X-Accel-Buffering"
    assert every_accel in internal
    assert every_accel in (SNIPPETS / "proxy-prefect.conf").read_text()
    assert "$neuronova_orthanc_authorization" in internal  # Orthanc's service account
    for prefix in ("/api/", "/dicom-web/"):
        assert f"location ^~ {prefix} {{" in locations  # no regex location can shadow them
    assert "server_tokens off;" in locations
    assert "add_header" not in locations  # would drop the server-level security headers
    for header, value in {
        "Cross-Origin-Opener-Policy": '"same-origin"',
        "Cross-Origin-Embedder-Policy": '"require-corp"',
        "Cross-Origin-Resource-Policy": '"same-origin"',
        "Referrer-Policy": '"no-referrer"',
    }.items():
        assert f"add_header {header} {value} always;" in headers
    assert "Content-Security-Policy" in headers and "frame-ancestors 'none'" in headers


def test_both_configs_log_without_viewer_tokens() -> None:
    common = (SNIPPETS / "http-common.conf").read_text()
    assert '"${path}?-"' in common and "/api/patients/<mrn>" in common
    for config in ("nginx.conf", "local.conf.template"):
        text = (NGINX_DIR / config).read_text()
        assert "include snippets/http-common.conf;" in text
        assert [
            line for line in text.splitlines() if "access_log" in line and "neuronova" not in line
        ] == []


def test_production_is_tls_only_with_hsts() -> None:
    text = (NGINX_DIR / "nginx.conf").read_text()
    assert "listen 443 ssl;" in text and "return 301 https://$server_name$request_uri;" in text
    # Unknown Host names: the default servers answer 421 (tests/nginx/test_production_server.py).
    assert "listen 443 ssl default_server;" in text and "listen 80 default_server;" in text
    assert "Strict-Transport-Security" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
