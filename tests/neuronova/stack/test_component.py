"""What the components share: the settings handed to a child process."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from common.settings import Settings
from neuronova.stack.component import settings_env
from neuronova.stack.ports import settings_on_free_ports


def test_settings_env_round_trips_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_on_free_ports(tmp_path).model_copy(
        update={"jwt_secret": SecretStr("s" * 40), "orthanc_retry_delays_s": [0.1, 0.2]}
    )
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings
