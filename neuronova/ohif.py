"""The OHIF viewer: its prebuilt `dist/` from npm, and our `app-config.js`.

`npm pack` fetches only the `@ohif/app` tarball (npm checks it against the registry's
integrity hash); nothing is built and no dependency is installed. The unpacked copy lives in
`.cache/ohif-<version>/` beside the project, outside `var/`, so `make clean` keeps it.
"""

from __future__ import annotations

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
