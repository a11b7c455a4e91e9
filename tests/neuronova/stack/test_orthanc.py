"""Orthanc: its configuration, then the real Orthanc (Debian package) started, killed, stopped
and refused a taken port by the same code as `neuronova stack up`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from common.errors import StackError
from neuronova.stack.components import ORTHANC
from neuronova.stack.orthanc import find_dicomweb_plugin, render_orthanc_config
from neuronova.stack.ports import port_free, settings_on_free_ports
from neuronova.stack.supervisor import LocalStack
from tests.support.orthanc import orthanc_http
from tests.support.processes import gone, processes_mentioning


@pytest.fixture
def orthanc_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A stack of Orthanc alone (it starts in about a second)."""
    stack = LocalStack(settings_on_free_ports(tmp_path), components=(ORTHANC,))
    yield stack
    stack.down()


def test_orthanc_config_is_loopback_only_with_dicomweb(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path)
    home = settings.stack_dir / "orthanc"
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    config = render_orthanc_config(settings, home, plugin)

    assert config["HttpPort"] == settings.orthanc_http_port
    assert config["DicomPort"] == settings.orthanc_dicom_port
    assert config["DicomAet"] == settings.orthanc_aet
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is True
    account = settings.orthanc_credentials()
    assert account is not None and config["RegisteredUsers"] == {account[0]: account[1]}
    assert config["LuaScripts"] == [str(home / "host-filter.lua")]
    assert config["OverwriteInstances"] is False
    assert config["StorageCompression"] is False
    assert Path(config["StorageDirectory"]).is_relative_to(settings.stack_dir)
    assert Path(config["IndexDirectory"]).is_relative_to(settings.stack_dir)
    assert config["Plugins"] == [str(plugin)]
    assert config["DicomWeb"]["Enable"] is True
    assert config["DicomWeb"]["Root"] == "/dicom-web/"
    assert config["DicomWeb"]["WadoRoot"] == "/wado"
    assert config["DicomWeb"]["StudiesMetadata"] == "Full"
    # Only storescu from this host may store (the default list); the port is open on every
    # interface. StableAge: the local stack's few seconds unless set.
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomCheckModalityHost"] is True
    assert config["DicomCheckCalledAet"] is True and config["DicomTlsEnabled"] is False
    assert list(config["DicomModalities"].values()) == [["STORESCU", "127.0.0.1", 11112]]
    assert config["StableAge"] == (settings.orthanc_stable_age_s or 5)  # the session sets 2
    # It stops Orthanc 1.10.1 from starting with the HTJ2K UID.
    assert "IngestTranscoding" not in config
    json.dumps(config)


def test_dicomweb_plugin_found_by_glob_prefers_unversioned(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "libOrthancDicomWeb.so.1.7").touch()
    (plugins / "libOrthancDicomWeb.so").touch()
    (plugins / "libServeFolders.so").touch()
    patterns = [str(tmp_path / "missing/*DicomWeb*.so*"), str(plugins / "*DicomWeb*.so*")]

    assert find_dicomweb_plugin(patterns) == plugins / "libOrthancDicomWeb.so"
    assert find_dicomweb_plugin([str(tmp_path / "missing/*.so")]) is None


@pytest.mark.integration
def test_orthanc_answers_rest_and_dicomweb(full_stack: LocalStack) -> None:
    http = orthanc_http(full_stack.settings)
    system = http.get("/system").json()
    assert system["DicomAet"] == full_stack.settings.orthanc_aet
    assert system["HttpPort"] == full_stack.settings.orthanc_http_port

    studies = http.get("/dicom-web/studies")
    assert studies.status_code == 200  # the DICOMweb plugin is loaded
    assert isinstance(studies.json(), list)
    assert full_stack.root.joinpath("orthanc", "db", "index").exists()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_storescu_may_push_and_other_callers_or_called_aets_may_not(full_stack: LocalStack) -> None:
    settings = full_stack.settings
    path = get_testdata_file("CT_small.dcm")

    def push(aet: str, called: str = settings.orthanc_aet) -> int:
        command = ["storescu", "-aet", aet, "-aec", called, "127.0.0.1"]
        return subprocess.run(
            [*command, str(settings.orthanc_dicom_port), str(path)], capture_output=True
        ).returncode

    assert push("INTRUDER") != 0
    assert push("STORESCU", called="OTHER_PACS") != 0  # set up for another archive
    http = orthanc_http(settings)
    assert http.get("/instances").json() == []
    assert push("STORESCU") == 0
    assert len(http.get("/instances").json()) == 1


@pytest.mark.integration
def test_down_stops_orthanc_and_frees_its_ports(orthanc_stack: LocalStack) -> None:
    settings = orthanc_stack.settings
    pid = orthanc_stack.up()["components"]["orthanc"]["pid"]
    assert processes_mentioning(str(orthanc_stack.root)) == [pid]

    orthanc_stack.down()
    assert gone(pid)
    assert not processes_mentioning(str(orthanc_stack.root))
    assert not list(orthanc_stack.run_dir.glob("*.pid"))
    for port in (settings.orthanc_http_port, settings.orthanc_dicom_port):
        assert port_free("0.0.0.0", port)


@pytest.mark.integration
def test_a_killed_orthanc_is_restarted_with_its_data(orthanc_stack: LocalStack) -> None:
    http = orthanc_http(orthanc_stack.settings)
    pid = orthanc_stack.up()["components"]["orthanc"]["pid"]
    stored = http.post(
        "/instances", content=Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()
    )
    assert stored.status_code == 200
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert orthanc_stack.status()["up"] is False
    new_pid = orthanc_stack.up()["components"]["orthanc"]["pid"]
    assert new_pid != pid
    assert http.get("/instances").json() == [stored.json()["ID"]]


@pytest.mark.integration
def test_orthanc_start_fails_cleanly_when_its_port_is_taken(orthanc_stack: LocalStack) -> None:
    port = orthanc_stack.settings.orthanc_dicom_port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(StackError, match=f"port 0.0.0.0:{port} already in use"):
            orthanc_stack.up()
    assert not processes_mentioning(str(orthanc_stack.root))
    assert not list(orthanc_stack.run_dir.glob("*.pid"))


@pytest.mark.integration
def test_orthanc_answers_only_its_service_account_and_its_own_host_names(
    orthanc_stack: LocalStack,
) -> None:
    """Loopback is no trust boundary: a browser page on this machine (DNS rebinding included)
    knows neither the password nor a Host that Orthanc answers to."""
    status = orthanc_stack.up()
    settings = orthanc_stack.settings
    account = settings.orthanc_credentials()
    assert account is not None
    assert status["credentials"]["orthanc"] == {"username": account[0], "password": account[1]}
    assert account[1] not in status["orthanc"]  # the URL stays secret-free
    config = orthanc_stack.root / "orthanc" / "orthanc.json"
    assert config.stat().st_mode & 0o077 == 0  # it holds the password

    base = settings.orthanc_url
    assert httpx.get(f"{base}/system", timeout=5).status_code == 401
    assert httpx.get(f"{base}/system", auth=(account[0], "wrong"), timeout=5).status_code == 401
    assert httpx.get(f"{base}/system", auth=account, timeout=5).status_code == 200
    for host in ("attacker.example", f"attacker.example:{settings.orthanc_http_port}"):
        foreign = httpx.get(f"{base}/system", auth=account, headers={"Host": host}, timeout=5)
        assert foreign.status_code == 403, host
    nginx_host = httpx.get(f"{base}/system", auth=account, headers={"Host": "orthanc"}, timeout=5)
    assert nginx_host.status_code == 200


def test_the_modalities_and_the_stable_age_are_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuronova.stack.orthanc import dicom_status

    modalities = [
        {"aet": "CT_ROOM1", "host": "10.1.2.3", "port": 104},
        {"aet": "MR 3T", "host": "mr3t.hospital.example"},
    ]
    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", json.dumps(modalities))
    monkeypatch.setenv("NEURONOVA_ORTHANC_STABLE_AGE_S", "45")
    settings = settings_on_free_ports(tmp_path)
    config = render_orthanc_config(settings, tmp_path, Path("/plugin.so"))
    assert list(config["DicomModalities"].values()) == [
        ["CT_ROOM1", "10.1.2.3", 104],
        ["MR 3T", "mr3t.hospital.example", 104],
    ]
    assert config["StableAge"] == 45
    assert dicom_status(settings) == {
        "host": "127.0.0.1",
        "port": settings.orthanc_dicom_port,
        "aet": settings.orthanc_aet,
        "allowed": [
            {"aet": "CT_ROOM1", "host": "10.1.2.3"},
            {"aet": "MR 3T", "host": "mr3t.hospital.example"},
        ],
    }


@pytest.mark.parametrize(
    "modality",
    [
        {"aet": "", "host": "10.0.0.1"},
        {"aet": "SEVENTEEN_CHARS_X", "host": "10.0.0.1"},
        {"aet": "CT1", "host": "10.0.0.1; rm -rf /"},
        {"aet": "CT1", "host": "10.0.0.1", "port": 0},
    ],
)
def test_a_malformed_modality_is_refused_with_its_field(
    modality: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from common.settings import Settings

    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", json.dumps([modality]))
    with pytest.raises(ValidationError, match="dicom_modalities"):
        Settings()
