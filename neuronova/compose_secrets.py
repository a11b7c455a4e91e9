"""The production stack's secrets (docker-compose.yml `secrets:`): one file each under
./secrets/, written once by `neuronova secrets generate` and never overwritten.

Compose hands a file secret to a container as a bind mount of the file itself, with the
file's owner and mode: the services run as their own users (10001, orthanc, redis, postgres),
so each file is readable (0644) and the folder is not (0700: nobody but its owner on the host
reaches the files; a container sees only the secrets its service names).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from neuronova.stack.component import write_atomically

SECRET_FILE_MODE = 0o644
SECRETS_DIR_MODE = 0o700
ORTHANC_USER = "neuronova"  # the service account our services and nginx use


def _token(nbytes: int) -> Callable[[dict[str, str]], str]:
    return lambda _written: secrets.token_urlsafe(nbytes)


def _orthanc_users(written: dict[str, str]) -> str:
    # A configuration file the orthancteam image merges (/run/secrets/*.json): the service
    # account with the password of `orthanc_password`, written in the same run.
    return json.dumps({"RegisteredUsers": {ORTHANC_USER: written["orthanc_password"]}})


@dataclass(frozen=True)
class SecretFile:
    name: str  # the file under ./secrets/
    make: Callable[[dict[str, str]], str]
    hospital_provides: bool = False  # an account of the hospital's: replace the generated one


SECRET_FILES: tuple[SecretFile, ...] = (
    SecretFile("mysql_password", _token(24)),
    SecretFile("mysql_root_password", _token(24)),
    SecretFile("orthanc_password", _token(24)),
    SecretFile("orthanc-users.json", _orthanc_users),
    SecretFile("orthanc_db_password", _token(24)),
    SecretFile("prefect_db_password", _token(24)),
    SecretFile("prefect_auth_string", _token(32)),
    SecretFile("redis_password", _token(24)),
    SecretFile("jwt_secret", _token(48)),
    SecretFile("emr_client_secret", _token(24), hospital_provides=True),
    SecretFile("emr_password", _token(18), hospital_provides=True),
    SecretFile("fhir_db_password", _token(24)),
    SecretFile("openemr_db_password", _token(24)),
    SecretFile("openemr_db_root_password", _token(24)),
)


@dataclass(frozen=True)
class Generated:
    written: tuple[str, ...]
    kept: tuple[str, ...]


def generate_secrets(folder: Path) -> Generated:
    """Write every secret file that is missing (an existing one is kept as it is: it may be in
    use by a database already initialised with it)."""
    folder.mkdir(mode=SECRETS_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(folder, SECRETS_DIR_MODE)
    values: dict[str, str] = {}
    written, kept = [], []
    for secret in SECRET_FILES:
        path = folder / secret.name
        if path.exists():
            values[secret.name] = path.read_text().strip()
            kept.append(secret.name)
            continue
        values[secret.name] = secret.make(values)
        write_atomically(path, values[secret.name] + "\n", mode=SECRET_FILE_MODE, exact_mode=True)
        written.append(secret.name)
    check_orthanc_users(folder)
    return Generated(tuple(written), tuple(kept))


def check_orthanc_users(folder: Path) -> None:
    """The Orthanc account file must carry `orthanc_password`: a password changed in one file
    and not the other would lock every service out of the archive."""
    password = (folder / "orthanc_password").read_text().strip()
    try:
        users = json.loads((folder / "orthanc-users.json").read_text())["RegisteredUsers"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f'{folder / "orthanc-users.json"} is not {{"RegisteredUsers": {{…}}}}: delete it '
            "and run `neuronova secrets generate` again"
        ) from err
    if users.get(ORTHANC_USER) != password:
        raise ValueError(
            f"{folder / 'orthanc-users.json'} does not hold orthanc_password for "
            f"{ORTHANC_USER!r}: delete it and run `neuronova secrets generate` again"
        )
