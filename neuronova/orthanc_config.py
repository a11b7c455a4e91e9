"""Orthanc's DICOM configuration for the production stack, from NeuroNova's own settings.

`docker-compose.yml` runs `python -m neuronova.orthanc_config FILE --dicom-tls true|false` once
(the `orthanc-config` service) before Orthanc starts. FILE lands in a volume that Orthanc mounts
at /etc/orthanc/, where the orthancteam image merges every *.json with its ORTHANC__* variables.
So compose and the local stack (neuronova/stack/orthanc.py) take the modalities allowed to
C-STORE from the same setting, NEURONOVA_DICOM_MODALITIES, with the same options, and a bad
value stops this service: Orthanc, which waits for it, never opens its port with a list that
nobody checked.

Exit status: 0 the file is written; 1 the settings or the file cannot be used (one line says
which, and what to do); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from common.errors import ConfigError
from common.settings import Settings
from neuronova.stack.component import write_atomically

# Where compose mounts ./secrets/dicom-tls, read-only, in the Orthanc container (outside
# /etc/orthanc/, which the image reads as configuration).
TLS_DIR = PurePosixPath("/etc/neuronova/dicom-tls")
TLS_FILES = {
    "DicomTlsCertificate": "orthanc.crt",  # Orthanc's own certificate (PEM)
    "DicomTlsPrivateKey": "orthanc.key",  # its private key (PEM, without a passphrase)
    "DicomTlsTrustedCertificates": "trusted.crt",  # the modalities' certificates, concatenated
}
EXAMPLE = '[{"aet": "CT_ROOM1", "host": "10.1.2.3", "port": 104}]'


def orthanc_modalities(settings: Settings) -> dict[str, list[str | int]]:
    """Orthanc's `DicomModalities`: a symbolic name for each allowed modality."""
    return {
        f"modality-{index}": [m.aet, m.host, m.port]
        for index, m in enumerate(settings.dicom_modalities, 1)
    }


def dicom_config(settings: Settings, *, tls: bool) -> dict[str, Any]:
    """Orthanc's options for C-STORE from modalities, for compose and the local stack (which
    runs without TLS)."""
    # The image runs envsubst over these files: no value may hold a `$`, which the patterns of
    # DicomModality (AET, host) already refuse.
    config: dict[str, Any] = {
        # The port is published to the hospital's network: stores only from the configured
        # modalities, each checked by calling AET and by the address it comes from.
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": orthanc_modalities(settings),
        # A modality must call this archive by its AET: a scanner set up for another PACS is
        # refused at the association rather than storing its studies here.
        "DicomCheckCalledAet": True,
        "DicomTlsEnabled": tls,
    }
    if tls:
        config.update({option: str(TLS_DIR / name) for option, name in TLS_FILES.items()})
        # Mutual TLS: an AET and an address can be claimed by anyone on the network, a
        # certificate that Orthanc trusts cannot.
        config["DicomTlsRemoteCertificateRequired"] = True
    return config


def load_settings() -> Settings:
    """The settings, or a ConfigError naming the variable at fault (never its value)."""
    try:
        return Settings()
    except SettingsError as err:  # not JSON at all: pydantic-settings names the field only
        found = re.search(r'field "(\w+)"', str(err))
        name = f"NEURONOVA_{found.group(1).upper()}" if found else "a NEURONOVA_* variable"
        raise ConfigError(f"{name} is not valid JSON (expected JSON such as {EXAMPLE})") from None
    except ValidationError as err:
        problems = "; ".join(_describe(error) for error in err.errors())
        raise ConfigError(f"{problems} (expected JSON such as {EXAMPLE})") from None


def _describe(error: Any) -> str:
    """One validation error as `NEURONOVA_FIELD[index].part: message`."""
    field, *rest = error["loc"]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)
    return f"NEURONOVA_{str(field).upper()}{where}: {error['msg']}"


def _switch(value: str) -> bool:
    """`true` or `false`, in any case; anything else is refused rather than guessed."""
    if value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise argparse.ArgumentTypeError(
        f"{value!r}: NEURONOVA_DICOM_TLS (in .env) must be true or false"
    )


def summary(path: Path, config: dict[str, Any]) -> str:
    """What was written, in one line for the service's log (AETs only: no patient data)."""
    aets = [entry[0] for entry in config["DicomModalities"].values()]
    who = f"C-STORE from {', '.join(aets)}" if aets else "no modality may C-STORE"
    return f"{path}: {who}; DICOM TLS {'on' if config['DicomTlsEnabled'] else 'off'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuronova.orthanc_config",
        description="Write Orthanc's DICOM configuration (modalities, DICOM TLS) from "
        "NEURONOVA_DICOM_MODALITIES.",
    )
    parser.add_argument("output", type=Path, help="the JSON file Orthanc reads at start")
    parser.add_argument(
        "--dicom-tls",
        type=_switch,
        default=False,
        metavar="true|false",
        help=f"DICOM TLS on Orthanc's port, with the certificates in {TLS_DIR}",
    )
    args = parser.parse_args(argv)
    try:
        config = dicom_config(load_settings(), tls=args.dicom_tls)
    except ConfigError as err:
        print(f"orthanc-config: {err}", file=sys.stderr)
        return 1
    try:
        # Readable by Orthanc's user, whichever it is: the file holds no secret.
        write_atomically(
            args.output, json.dumps(config, indent=2) + "\n", mode=0o644, exact_mode=True
        )
    except OSError as err:
        print(
            f"orthanc-config: cannot write {args.output} ({err.strerror}): the volume must be "
            "writable by this image's user",
            file=sys.stderr,
        )
        return 1
    print(summary(args.output, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
