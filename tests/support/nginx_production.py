"""The production nginx config (nginx/nginx.conf, for the image's nginx 1.27.5) on the nginx
Debian ships, which may be older: what an older one lacks is taken out, and said here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def nginx_version(binary: Path) -> tuple[int, ...]:
    banner = subprocess.run([str(binary), "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", banner)
    assert match, banner
    return tuple(int(part) for part in match.groups())


def for_debian_nginx(config: str, version: tuple[int, ...]) -> str:
    """The config as an older nginx accepts it:
    - `http2 on;` is 1.25.1's (Debian 12 has 1.22);
    - an upstream server's `resolve` (re-resolved through the resolver) is 1.27.3's (Debian 13
      has 1.26): without it the name is resolved once, at start, as before."""
    if version < (1, 25, 1):
        config = config.replace("http2 on;", "")
    if version < (1, 27, 3):
        config = re.sub(r"(server [a-z-]+:\d+) resolve;", r"\1;", config)
    return config


def self_signed_certificate(folder: Path, host: str) -> None:
    """fullchain.pem and privkey.pem in `folder` (where the gateway image mounts them), for
    `host`, valid two days; the key readable by nginx's master in another user's container."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={host}",
            "-keyout", str(folder / "privkey.pem"), "-out", str(folder / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (folder / "privkey.pem").chmod(0o644)
