"""npm trees are installed once, from their lock files, by `make system`: a tree installed from
the lock file as it is needs nothing (and no network) again, a changed lock file is installed
again, and everything the tests use is in place before any test runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronova import node
from neuronova.ohif import ohif_root
from neuronova.stack.packages import NPM_FOLDERS, ensure_npm_folders


def test_a_tree_is_installed_again_only_when_its_lock_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installs: list[Path] = []

    def fake_npm_ci(folder: Path) -> None:
        installs.append(folder)
        (folder / "node_modules").mkdir(exist_ok=True)

    monkeypatch.setattr(node, "npm_ci", fake_npm_ci)
    (tmp_path / "package-lock.json").write_text('{"lockfileVersion": 3}')
    assert not node.npm_packages_current(tmp_path)
    assert ensure_npm_folders([tmp_path]) == [tmp_path]
    assert node.npm_packages_current(tmp_path)
    assert ensure_npm_folders([tmp_path]) == []  # installed from this lock file: nothing to do
    (tmp_path / "package-lock.json").write_text('{"lockfileVersion": 3, "packages": {}}')
    assert ensure_npm_folders([tmp_path]) == [tmp_path]
    assert installs == [tmp_path, tmp_path]
    assert ensure_npm_folders([tmp_path / "no-such-folder"]) == []


@pytest.mark.parametrize("folder", NPM_FOLDERS, ids=lambda f: f.name)
def test_make_system_installed_every_npm_tree_before_the_tests(folder: Path) -> None:
    """No test installs anything (offline `make test` after one online `make demo`)."""
    assert node.npm_packages_current(folder), f"run `make system`: {folder} is not installed"


def test_make_system_installed_ohif_before_the_tests() -> None:
    assert (ohif_root() / "index.html").is_file(), "run `make system`: OHIF is not installed"
