"""The OHIF viewer: its prebuilt `dist/` from npm, and our `app-config.js`.

`npm pack` fetches only the `@ohif/app` tarball (npm checks it against the registry's
integrity hash); nothing is built and no dependency is installed. The unpacked copy lives in
`.cache/ohif-<version>/` beside the project, outside `var/`, so `make clean` keeps it.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli

from common.errors import StackError
from common.settings import PROJECT_ROOT
from neuronova.node import node_env, npm_command

log = logging.getLogger(__name__)

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# Its AI tools' ONNX runtime (136 MB): unused here.
_UNUSED = ("ort",)

# What nginx serves precompressed (gzip_static, brotli_static): OHIF's text and WebAssembly, ~60 MB
# as shipped.
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
    """Write `NAME.gz` (gzip level 9) and `NAME.br` (brotli quality 11) beside each of OHIF's text
    and WebAssembly files that lacks up-to-date ones, so nginx sends the smaller file with no work
    per request (`gzip_static`, and `brotli_static` where nginx has the module: 2.4 MB instead of
    3.3 MB gzip and 17 MB plain for the app bundle); returns how many were written. Once per
    install: 45 s on 2 cores here, download included (brotli's best quality is slow to write,
    not to read)."""
    wanted: list[tuple[Path, Path]] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in PRECOMPRESSED_SUFFIXES:
            continue
        if path.name in _NOT_PRECOMPRESSED:
            continue
        for suffix in _ENCODINGS:
            packed = path.with_name(path.name + suffix)
            if not packed.exists() or packed.stat().st_mtime < path.stat().st_mtime:
                wanted.append((path, packed))
    # Both compressors release the GIL: threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda job: _write_packed(*job), wanted))
    if wanted:
        log.info("OHIF: %d files precompressed for gzip_static and brotli_static", len(wanted))
    return len(wanted)


def _write_packed(path: Path, packed: Path) -> None:
    tmp = packed.with_name(packed.name + ".tmp")
    tmp.write_bytes(_ENCODINGS[packed.suffix](path.read_bytes()))
    tmp.replace(packed)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _brotli(data: bytes) -> bytes:
    return bytes(brotli.compress(data, quality=11))


# The precompressed copies, by suffix: what nginx's gzip_static and brotli_static look for.
_ENCODINGS: dict[str, Callable[[bytes], bytes]] = {".gz": _gzip, ".br": _brotli}
