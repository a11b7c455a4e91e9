"""Debian packages: only the missing ones are installed, apt-get update runs once."""

from __future__ import annotations

import pytest

from common.errors import StackError
from neuronova.stack import packages
from neuronova.stack.packages import ensure_system_packages


def test_ensure_system_packages_installs_only_missing_and_updates_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed = {"orthanc"}
    calls: list[list[str]] = []

    def fake_apt(args: list[str]) -> None:
        calls.append(list(args))
        if args[0] == "install":
            installed.update(args[3:])

    monkeypatch.setattr(packages, "_dpkg_installed", lambda p: p in installed)
    monkeypatch.setattr(packages, "_run_apt", fake_apt)
    monkeypatch.setattr(packages, "_apt_updated", False)

    ensure_system_packages(["orthanc"])
    assert calls == []
    ensure_system_packages(["orthanc", "dcmtk"])
    ensure_system_packages(["dicom3tools"])
    assert calls == [
        ["update"],
        ["install", "-y", "--no-install-recommends", "dcmtk"],
        ["install", "-y", "--no-install-recommends", "dicom3tools"],
    ]


def test_ensure_system_packages_fails_when_apt_cannot_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packages, "_dpkg_installed", lambda p: False)
    monkeypatch.setattr(packages, "_run_apt", lambda args: None)
    with pytest.raises(StackError, match="could not install: no-such-package"):
        ensure_system_packages(["no-such-package"])
