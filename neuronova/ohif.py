"""The OHIF viewer: its prebuilt `dist/` from npm, and our `app-config.js`.

`npm pack` fetches only the `@ohif/app` tarball (npm checks it against the registry's
integrity hash); nothing is built and no dependency is installed. The unpacked copy lives in
`.cache/ohif-<version>/` beside the project, outside `var/`, so `make clean` keeps it.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from common.errors import StackError
from common.settings import PROJECT_ROOT
from neuronova.node import node_env, npm_command

log = logging.getLogger(__name__)

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# Its AI tools' ONNX runtime (136 MB): unused here.
_UNUSED = ("ort",)

# What nginx serves precompressed (gzip_static): OHIF's text and WebAssembly, ~60 MB as shipped.
PRECOMPRESSED_SUFFIXES = frozenset({".js", ".css", ".wasm", ".json", ".svg", ".html", ".txt"})
# Rewritten whenever our configuration changes: compressed on the fly instead, never stale.
_NOT_PRECOMPRESSED = frozenset({"app-config.js"})

# Our OHIF configuration (same-origin DICOMweb through the gate; why WADO-URI: see the file).
APP_CONFIG_PATH = PROJECT_ROOT / "nginx" / "ohif-app-config.js"


def ohif_root(version: str = OHIF_VERSION) -> Path:
    """The folder nginx serves: OHIF's dist/ with our app-config.js."""
    return PROJECT_ROOT / ".cache" / f"ohif-{version}" / "dist"


def ensure_ohif(version: str = OHIF_VERSION) -> Path:
    """Install OHIF's dist/ unless present; (re)write app-config.js; return the folder."""
    root = ohif_root(version)
    if not (root / "index.html").exists():
        _install(version, root)
    precompress(root)
    wanted = APP_CONFIG_PATH.read_text()
    config = root / "app-config.js"
    if not config.exists() or config.read_text() != wanted:
        tmp = config.with_name("app-config.js.tmp")
        tmp.write_text(wanted)
        tmp.replace(config)
    return root


def _install(version: str, root: Path) -> None:
    log.info("downloading %s@%s (about 50 MB)", OHIF_PACKAGE, version)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent.parent) as work:
        result = subprocess.run(
            npm_command(
                "pack", f"{OHIF_PACKAGE}@{version}", "--silent", "--pack-destination", work
            ),
            env=node_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        tarballs = list(Path(work).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise StackError(f"npm pack {OHIF_PACKAGE}@{version} failed: {result.stderr[-2000:]}")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(unpacked, filter="data")  # refuses absolute paths and links out
        dist = unpacked / "package" / "dist"
        if not (dist / "index.html").exists():
            raise StackError(f"{OHIF_PACKAGE}@{version} has no prebuilt dist/index.html")
        for name in _UNUSED:
            shutil.rmtree(dist / name, ignore_errors=True)
        if root.exists():
            shutil.rmtree(root)
        dist.replace(root)
    log.info("OHIF %s installed in %s", version, root)


def precompress(root: Path) -> int:
    """Write `NAME.gz` (level 9) beside each of OHIF's text and WebAssembly files that lacks an
    up-to-date one, so nginx sends the smaller file with no work per request (`gzip_static`);
    returns how many were written. Once per install: about 10 s on 2 cores."""
    written = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in PRECOMPRESSED_SUFFIXES:
            continue
        if path.name in _NOT_PRECOMPRESSED:
            continue
        packed = path.with_name(path.name + ".gz")
        if packed.exists() and packed.stat().st_mtime >= path.stat().st_mtime:
            continue
        tmp = packed.with_name(packed.name + ".tmp")
        tmp.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
        tmp.replace(packed)
        written += 1
    if written:
        log.info("OHIF: %d files precompressed for gzip_static", written)
    return written
