"""No PHI readable in files: the stack's data folder, after studies were ingested, viewed and
logged, holds nothing another user of the machine could read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.private_files import PRIVATE_UMASK
from tests.support.viewing import Viewing

pytestmark = pytest.mark.integration


def test_the_data_folder_and_all_it_holds_are_the_owners_alone(viewing: Viewing) -> None:
    data = viewing.settings.data_dir
    with viewing.client() as client:  # a logged request first: nginx and the webapp write
        viewing.open(client, viewing.login(client)["access_token"])
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    open_to_others = []
    for folder, subfolders, files in os.walk(data):
        for name in (*subfolders, *files):
            mode = os.lstat(Path(folder, name)).st_mode
            if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                continue
            if stat.S_IMODE(mode) & PRIVATE_UMASK:
                open_to_others.append(f"{Path(folder, name).relative_to(data)} {oct(mode)}")
    assert open_to_others == [], "\n".join(open_to_others)
