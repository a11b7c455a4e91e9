"""`python -m neuronova.orthanc_config`: Orthanc's DICOM configuration for compose, written from
NEURONOVA_DICOM_MODALITIES with the local stack's options, and refused when the list is bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.settings import Settings
from neuronova.orthanc_config import TLS_DIR, dicom_config, main
from neuronova.stack.orthanc import render_orthanc_config

MODALITIES = [
    {"aet": "CT_ROOM1", "host": "10.1.2.3", "port": 104},
    {"aet": "MR 3T", "host": "mr3t.hospital.example"},
]


@pytest.fixture(autouse=True)
def _modalities(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env is read
    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", json.dumps(MODALITIES))


def test_the_written_file_lists_the_modalities_with_tls_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "volume" / "neuronova-dicom.json"

    assert main([str(output), "--dicom-tls", "false"]) == 0

    assert json.loads(output.read_text()) == {
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            "modality-1": ["CT_ROOM1", "10.1.2.3", 104],
            "modality-2": ["MR 3T", "mr3t.hospital.example", 104],
        },
        "DicomCheckCalledAet": True,
        "DicomTlsEnabled": False,
    }
    # Orthanc's user in its own container reads it; it holds no secret.
    assert output.stat().st_mode & 0o777 == 0o644
    assert capsys.readouterr().out.strip() == (
        f"{output}: C-STORE from CT_ROOM1, MR 3T; DICOM TLS off"
    )


def test_tls_is_off_unless_asked_for(tmp_path: Path) -> None:
    output = tmp_path / "neuronova-dicom.json"
    assert main([str(output)]) == 0
    assert json.loads(output.read_text())["DicomTlsEnabled"] is False


@pytest.mark.parametrize("switch", ["true", "TRUE", "True"])
def test_tls_on_points_at_the_mounted_certificates_and_wants_the_modalitys(
    switch: str, tmp_path: Path
) -> None:
    output = tmp_path / "neuronova-dicom.json"

    assert main([str(output), "--dicom-tls", switch]) == 0

    written = json.loads(output.read_text())
    assert written["DicomTlsEnabled"] is True
    assert written["DicomTlsCertificate"] == f"{TLS_DIR}/orthanc.crt"
    assert written["DicomTlsPrivateKey"] == f"{TLS_DIR}/orthanc.key"
    assert written["DicomTlsTrustedCertificates"] == f"{TLS_DIR}/trusted.crt"
    assert written["DicomTlsRemoteCertificateRequired"] is True
    assert len(written["DicomModalities"]) == 2


def test_the_c_store_options_are_the_local_stacks(tmp_path: Path) -> None:
    """One rule for who may store, whichever stack runs Orthanc."""
    settings = Settings(data_dir=tmp_path / "var")
    local = render_orthanc_config(settings, tmp_path / "orthanc", Path("/plugin.so"))

    ours = dicom_config(settings, tls=False)

    shared = {key: value for key, value in ours.items() if not key.startswith("DicomTls")}
    assert shared == {key: local[key] for key in shared}


def test_an_empty_list_lets_nobody_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", "[]")
    output = tmp_path / "neuronova-dicom.json"

    assert main([str(output)]) == 0

    assert json.loads(output.read_text())["DicomModalities"] == {}
    assert "no modality may C-STORE" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("CT_ROOM1@10.1.2.3", "NEURONOVA_DICOM_MODALITIES is not valid JSON"),
        ('{"aet": "CT1", "host": "10.0.0.1"}', "NEURONOVA_DICOM_MODALITIES: Input should be a"),
        ('[{"aet": "", "host": "10.0.0.1"}]', "NEURONOVA_DICOM_MODALITIES[0].aet"),
        ('[{"aet": "SEVENTEEN_CHARS_X", "host": "10.0.0.1"}]', "NEURONOVA_DICOM_MODALITIES[0].aet"),
        ('[{"aet": "CT1", "host": "10.0.0.1; rm -rf /"}]', "NEURONOVA_DICOM_MODALITIES[0].host"),
        ('[{"aet": "CT1", "host": "$HOSTNAME"}]', "NEURONOVA_DICOM_MODALITIES[0].host"),
        ('[{"aet": "CT1"}]', "NEURONOVA_DICOM_MODALITIES[0].host: Field required"),
        ('[{"aet": "CT1", "host": "10.0.0.1", "port": 0}]', "NEURONOVA_DICOM_MODALITIES[0].port"),
    ],
    ids=[
        "not JSON",
        "not a list",
        "no AET",
        "AET too long",
        "shell",
        "dollar",
        "no host",
        "port 0",
    ],
)
def test_a_bad_modality_list_is_refused_in_one_line_and_nothing_is_written(
    value: str,
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NEURONOVA_DICOM_MODALITIES", value)
    output = tmp_path / "neuronova-dicom.json"

    assert main([str(output)]) == 1

    err = capsys.readouterr().err
    assert err.startswith("orthanc-config: ") and says in err
    assert "expected JSON such as" in err  # what to write instead
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not output.exists()


def test_a_tls_switch_that_is_neither_true_nor_false_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "neuronova-dicom.json"

    with pytest.raises(SystemExit) as exit_:
        main([str(output), "--dicom-tls", "yes"])

    assert exit_.value.code == 2
    assert "NEURONOVA_DICOM_TLS (in .env) must be true or false" in capsys.readouterr().err
    assert not output.exists()


def test_a_file_that_cannot_be_written_is_one_line_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-folder").write_text("")

    assert main([str(tmp_path / "not-a-folder" / "neuronova-dicom.json")]) == 1

    err = capsys.readouterr().err
    assert err.startswith("orthanc-config: cannot write ") and "writable" in err
    assert len(err.strip().splitlines()) == 1
