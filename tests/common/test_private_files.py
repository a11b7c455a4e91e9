"""The data folder is its owner's alone, and one left open by an earlier version is closed."""

from __future__ import annotations

import stat
from pathlib import Path

from common.private_files import make_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_data_folder_is_0700(tmp_path: Path) -> None:
    data = tmp_path / "var"
    make_private(data)
    assert _mode(data) == 0o700


def test_an_open_folder_from_an_earlier_version_is_closed_without_following_links(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    data = tmp_path / "var"
    (data / "stack" / "orthanc").mkdir(parents=True)
    for folder in (data, data / "stack", data / "stack" / "orthanc"):
        folder.chmod(0o755)
    hashes = data / "neuronova.db"
    hashes.write_text("password hashes")
    hashes.chmod(0o644)
    script = data / "stack" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (data / "stack" / "link").symlink_to(outside)

    make_private(data)

    assert _mode(data) == 0o700
    assert _mode(data / "stack") == _mode(data / "stack" / "orthanc") == 0o700
    assert _mode(hashes) == 0o600 and _mode(script) == 0o700
    assert _mode(outside) == 0o644  # the link's target is not ours
