"""Debian packages: only the missing ones are installed, apt-get update runs once, and no
service that an install would start (orthanc, nginx, mariadb, redis) starts meanwhile."""

from __future__ import annotations

from pathlib import Path

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


def test_no_service_starts_while_packages_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy = tmp_path / "policy-rc.d"
    seen: list[str] = []

    def fake_apt(args: list[str]) -> None:
        if args[0] == "install":
            seen.append(policy.read_text())
            assert policy.stat().st_mode & 0o111, "invoke-rc.d runs it: it must be executable"

    monkeypatch.setattr(packages, "POLICY_RC_D", policy)
    monkeypatch.setattr(packages, "_dpkg_installed", lambda p: False)
    monkeypatch.setattr(packages, "_run_apt", fake_apt)
    monkeypatch.setattr(packages, "_apt_updated", True)
    with pytest.raises(StackError):  # the fake installs nothing
        ensure_system_packages(["mariadb-server"])
    assert seen and seen[0].rstrip().endswith("exit 101")  # 101: action forbidden
    assert not policy.exists()  # removed after the install: later boots start services again


def test_a_policy_the_machine_has_is_kept(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    with packages.services_kept_from_starting(policy):
        assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
