"""The deployments `neuronova serve` registers: names, flows, the nightly schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import Settings
from deployments.schedules import CRON_SETTINGS, DEPLOYMENTS, build_deployments, read_deployments


def test_nightly_archive_check_follows_the_setting() -> None:
    deployments = {d.name: d for d in build_deployments(Settings(htj2k_check_cron="15 3 * * *"))}

    assert set(deployments) == {
        "archive-nightly",
        "one-study",
        "on-arrival",
        "on-demand",
        "emr-scheduled",
        "one-patient",
        "owed",
    }
    [schedule] = deployments["archive-nightly"].schedules
    assert schedule.schedule.cron == "15 3 * * *"
    assert deployments["archive-nightly"].entrypoint.endswith("check_htj2k.py:check_htj2k")
    assert deployments["on-demand"].entrypoint.endswith("ingest_study.py:ingest_study")
    assert not deployments["one-study"].schedules


def test_patient_sync_runs_on_its_own_cron() -> None:
    deployments = {d.name: d for d in build_deployments(Settings(patient_sync_cron="5 * * * *"))}
    [schedule] = deployments["emr-scheduled"].schedules
    assert schedule.schedule.cron == "5 * * * *"
    assert deployments["emr-scheduled"].entrypoint.endswith("sync_patients.py:sync_patients")
    assert deployments["one-patient"].entrypoint.endswith("sync_patient.py:sync_patient")


def test_owed_verdicts_are_sent_every_five_minutes() -> None:
    by_flow = {(d.flow_name, d.name): d for d in build_deployments(Settings())}
    [schedule] = by_flow[("send_owed_verdicts", "owed")].schedules
    assert schedule.schedule.cron == "*/5 * * * *"  # type: ignore[union-attr]


def test_schedules_are_read_in_the_hospitals_time_zone() -> None:
    settings = Settings(schedule_timezone="Europe/Berlin")
    deployments = {d.name: d for d in build_deployments(settings)}
    for name in ("archive-nightly", "emr-scheduled"):
        [schedule] = deployments[name].schedules
        assert schedule.schedule.timezone == "Europe/Berlin", name
    [utc] = {d.name: d for d in build_deployments(Settings())}["archive-nightly"].schedules
    assert utc.schedule.timezone == "UTC"


def test_a_time_zone_that_is_none_is_refused() -> None:
    with pytest.raises(ValueError, match="NEURONOVA_SCHEDULE_TIMEZONE='Mars/Olympus' is no time"):
        Settings(schedule_timezone="Mars/Olympus")


def test_inference_can_be_run_for_one_study_from_the_ui() -> None:
    by_flow = {(d.flow_name, d.name): d for d in build_deployments(Settings())}
    deployment = by_flow[("run_inference", "one-study")]
    assert deployment.entrypoint.endswith("run_inference.py:run_inference")
    assert not deployment.schedules


def test_unset_schedules_come_from_prefect_yaml() -> None:
    deployments = {(d.flow_name, d.name): d for d in build_deployments(Settings())}
    [nightly] = deployments[("check_htj2k", "archive-nightly")].schedules
    [sync] = deployments[("sync_patients", "emr-scheduled")].schedules
    assert (nightly.schedule.cron, sync.schedule.cron) == ("30 2 * * *", "*/30 * * * *")  # type: ignore[union-attr]
    assert CRON_SETTINGS.keys() <= {
        (spec.entrypoint.split(":")[1], spec.name) for spec in DEPLOYMENTS if spec.cron
    }, "a setting overrides a deployment that has no schedule"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("deployments: [{name: x, entrypoint: 'a.py:f'}]", "work_pool"),
        ("deployments:\n  - {name: x, entrypoint: 'a.py:f', work_pool: {name: cpu},\n"
         "     schedules: [{cron: '0 1 * * *', timezone: Europe/Paris}]}", "UTC"),
        ("deployments: [", "cannot read"),
        ("name: no deployments here", "deployments"),
    ],
)  # fmt: skip
def test_a_prefect_yaml_we_cannot_register_is_refused_with_its_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "prefect.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as raised:
        read_deployments(path)
    assert str(path) in str(raised.value)
