"""Quarantine: inputs that were not stored are kept, byte for byte, with the reason why."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from sqlmodel import Session, select

from common.db import QuarantineItem, utcnow

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def quarantine_bytes(
    session: Session,
    quarantine_dir: Path,
    *,
    data: bytes,
    source: str,
    name: str,
    reason: str,
    kind: str = "quarantined",
    sop_instance_uid: str | None = None,
) -> QuarantineItem:
    """Keep `data` under `quarantine_dir/kind/` with a reason file and a database row.

    The same bytes quarantined again for the same kind reuse the existing copy and row, so a
    re-run of a batch does not pile up duplicates.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    existing = session.exec(
        select(QuarantineItem).where(QuarantineItem.sha256 == sha256, QuarantineItem.kind == kind)
    ).first()
    if existing is not None and Path(existing.kept_path).exists():
        return existing
    folder = quarantine_dir / kind / utcnow().strftime("%Y%m%d")
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"{sha256[:16]}-{_UNSAFE.sub('_', name)[:80] or 'input'}"
    write_durably(kept, data)
    sidecar = {
        "source": source,
        "reason": reason,
        "kind": kind,
        "sha256": sha256,
        "sop_instance_uid": sop_instance_uid,
        "at": utcnow().isoformat(),
    }
    write_durably(kept.with_name(kept.name + ".reason.json"), json.dumps(sidecar).encode())
    item = QuarantineItem(
        kind=kind,
        source_path=source[:1024],
        kept_path=str(kept),
        sha256=sha256,
        reason=reason[:1024],
        sop_instance_uid=sop_instance_uid,
    )
    session.add(item)
    log.info("%s %s: %s", kind, kept.name, reason)
    return item


def write_durably(path: Path, data: bytes) -> None:
    """Write then fsync, so a kept copy survives a crash right after we report it kept.

    The temporary name is unique, so two runs writing the same file never trip over each other.
    """
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
