"""`send_owed_verdicts()`: the readers' verdicts that FHIR could not take when they were given
(down, slow, or the AI's report not written yet), sent now.

Scheduled every few minutes (`verdicts/owed`); each reading's FHIR side is written whole from
the database's current verdicts (tasks/inference/verdict_fhir.py), so a run that stops half-way,
or two runs at once, converge. A run that leaves verdicts owed ends failed, saying why, so that
the Prefect UI shows it; the next run tries again.
"""

from __future__ import annotations

from typing import TypedDict

from prefect import flow, task

from common.db import ensure_schema
from common.errors import TransientUpstreamError
from common.settings import Settings
from tasks.inference.verdict_fhir import send_owed_verdicts as send_all


class OwedVerdictsReport(TypedDict):
    sent: int
    owed: int
    reason: str | None


@task(name="send_owed_verdicts")
def _send(settings: Settings) -> OwedVerdictsReport:
    outcome = send_all(settings)
    return OwedVerdictsReport(sent=outcome.sent, owed=outcome.owed, reason=outcome.reason)


@flow(name="send_owed_verdicts", log_prints=True)
def send_owed_verdicts() -> OwedVerdictsReport:
    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    report = _send(settings)
    print(f"verdicts sent to FHIR: {report['sent']}; still owed: {report['owed']}")
    if report["owed"]:
        raise TransientUpstreamError(f"{report['owed']} verdict(s) still owed: {report['reason']}")
    return report
