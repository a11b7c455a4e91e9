"""The readers' verdicts in FHIR: the report and its Observations take the status the current
verdicts give them, the reader becomes the report's `resultsInterpreter`, and every verdict
writes a Provenance (target: what it judged; agent: the reader, as a verifier; the reason).

| current verdict | DiagnosticReport / Observation status |
| --- | --- |
| none | preliminary (as the AI wrote it) |
| accepted | final |
| rejected | entered-in-error |
| corrected | corrected |

A finding's Observation follows its own verdict, else the reading's. The report's conclusion
keeps the AI's words and adds what the readers decided.

Sent after the verdict is committed, for one reading at a time under a lock (so two verdicts
sent at once cannot leave FHIR with the older state): the state is read from the database at
that moment and written whole, so sending again is harmless. A Provenance's id is derived from
its verdict's uid and written by update-as-create (PUT), so it exists once however often it is
sent. While FHIR cannot take it (down, or the AI's report not there yet) the verdict is owed
(`fhir_sent_at` null, `fhir_note` says why) and `send_owed_verdicts` (the `verdicts/owed`
deployment, every few minutes, and every run of the study's inference) sends it later.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.provenance import Provenance
from sqlmodel import col, select

from common.db import (
    InferenceFinding,
    InferenceResult,
    ReadingVerdict,
    as_utc,
    lock_dir_for,
    named_lock,
    session_scope,
    utcnow,
)
from common.errors import NeuroNovaError
from common.settings import Settings
from tasks.inference.report import tracking_uid_of
from tasks.inference.verdicts import current_verdicts
from tasks.patients.fhir import FhirClient

log = logging.getLogger(__name__)

USER_SYSTEM = "urn:neuronova:user"  # a Practitioner made for one of our users, by username
STATUS_OF = {
    None: "preliminary",
    "accepted": "final",
    "rejected": "entered-in-error",
    "corrected": "corrected",
}
VERDICT_MARK = " Reader's verdict:"
_VERIFIER = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "verifier",
    "display": "Verifier",
}
_VERIFY = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
    "code": "VRF",
    "display": "verifier",
}


@dataclass(frozen=True)
class SentVerdicts:
    """What one sending did: how many verdicts reached FHIR, and why the rest are owed."""

    sent: int
    owed: int
    reason: str | None = None


def send_verdicts(
    settings: Settings, result_id: int, *, fhir: FhirClient | None = None
) -> SentVerdicts:
    """Bring FHIR to the reading's current verdicts and write the Provenance of each verdict
    not sent yet; on failure they stay owed with the reason (nothing raised: the verdicts are
    recorded, only their FHIR side waits)."""
    url = settings.resolved_database_url
    with named_lock(url, f"nn-verdict-fhir-{result_id}", lock_dir_for(url), timeout_s=60):
        reading, findings, verdicts = _load(url, result_id)
        unsent = [v for v in verdicts if v.fhir_sent_at is None]
        if reading is None or not unsent:
            return SentVerdicts(0, 0)
        ids = [v.id for v in unsent if v.id is not None]
        if reading.fhir_report_id is None:
            reason = "the AI's report is not in FHIR yet: sent once it is"
            _mark(url, ids, sent=False, note=reason)
            return SentVerdicts(0, len(ids), reason)
        client = fhir or FhirClient.from_settings(settings)
        try:
            _apply(client, reading, findings, verdicts, unsent)
        except NeuroNovaError as err:
            reason = f"FHIR did not take it ({err}); kept, and sent again later"
            log.warning("verdicts on reading %s owed: %s", result_id, err)
            _mark(url, ids, sent=False, note=reason)
            return SentVerdicts(0, len(ids), reason)
        finally:
            if fhir is None:
                client.close()
        _mark(url, ids, sent=True, note=None)
        return SentVerdicts(len(ids), 0)


def owed_readings(settings: Settings) -> list[int]:
    """The readings with a verdict whose FHIR side is owed."""
    with session_scope(settings.resolved_database_url) as session:
        query = (
            select(ReadingVerdict.result_id)
            .where(col(ReadingVerdict.fhir_sent_at).is_(None))
            .distinct()
        )
        return sorted(session.exec(query))


def send_owed_verdicts(settings: Settings) -> SentVerdicts:
    """Send every owed verdict, reading by reading."""
    sent = owed = 0
    reasons: list[str] = []
    for result_id in owed_readings(settings):
        outcome = send_verdicts(settings, result_id)
        sent, owed = sent + outcome.sent, owed + outcome.owed
        if outcome.reason:
            reasons.append(f"reading {result_id}: {outcome.reason}")
    return SentVerdicts(sent, owed, "; ".join(reasons) or None)


# --------------------------------------------------------------------------- the FHIR side


def _load(
    url: str, result_id: int
) -> tuple[InferenceResult | None, list[InferenceFinding], list[ReadingVerdict]]:
    with session_scope(url) as session:
        reading = session.get(InferenceResult, result_id)
        findings = list(
            session.exec(select(InferenceFinding).where(InferenceFinding.result_id == result_id))
        )
        verdicts = list(
            session.exec(
                select(ReadingVerdict)
                .where(ReadingVerdict.result_id == result_id)
                .order_by(col(ReadingVerdict.id))
            )
        )
        return reading, findings, verdicts


def _mark(url: str, ids: list[int], *, sent: bool, note: str | None) -> None:
    with session_scope(url) as session:
        for row in session.exec(select(ReadingVerdict).where(col(ReadingVerdict.id).in_(ids))):
            row.fhir_sent_at = utcnow() if sent else None
            row.fhir_note = note[:255] if note else None
            session.add(row)


def _apply(
    fhir: FhirClient,
    reading: InferenceResult,
    findings: list[InferenceFinding],
    verdicts: list[ReadingVerdict],
    unsent: list[ReadingVerdict],
) -> None:
    current, per_finding = current_verdicts(verdicts)
    readers = {v.username for v in unsent} | ({current.username} if current else set())
    practitioners = {name: practitioner_id(fhir, name) for name in sorted(readers)}
    report = fhir.read("DiagnosticReport", str(reading.fhir_report_id))
    if report is None:
        raise NeuroNovaError(f"DiagnosticReport/{reading.fhir_report_id} is gone from FHIR")
    labels = {f.tracking_uid: f.label for f in findings}
    wanted = judged_report(report, current, per_finding, labels, practitioners)
    if wanted != report:
        fhir.update(wanted)
    for ref in report.get("result", []):
        observation_id = str(ref.get("reference", "")).removeprefix("Observation/")
        observation = fhir.read("Observation", observation_id)
        if observation is None:
            continue
        tracking_uid = tracking_uid_of(observation)
        governing = per_finding.get(tracking_uid, current) if tracking_uid else current
        judged = judged_observation(observation, tracking_uid, governing)
        if judged != observation:
            fhir.update(judged)
    observation_of = {f.tracking_uid: f.fhir_observation_id for f in findings}
    for verdict in unsent:
        if verdict.finding_tracking_uid is None:
            target = f"DiagnosticReport/{reading.fhir_report_id}"
        elif observation_of.get(verdict.finding_tracking_uid):
            target = f"Observation/{observation_of[verdict.finding_tracking_uid]}"
        else:
            raise NeuroNovaError(f"the finding {verdict.finding_tracking_uid} has no Observation")
        fhir.update(verdict_provenance(verdict, target, practitioners[verdict.username]))


def judged_observation(
    observation: dict[str, Any], tracking_uid: str | None, governing: ReadingVerdict | None
) -> dict[str, Any]:
    """The Observation as its governing verdict makes it: its status, and for a correction the
    value the reader's SEG measures (a lesion's volume, the total, the count)."""
    judged = {**observation, "status": STATUS_OF[governing.verdict if governing else None]}
    volumes = (
        json.loads(governing.corrected_volumes)
        if governing is not None and governing.corrected_volumes
        else None
    )
    if not volumes:
        return judged
    code = str(observation.get("code", {}).get("coding", [{}])[0].get("code", ""))
    if tracking_uid is not None and tracking_uid in volumes:
        judged["valueQuantity"] = {**observation["valueQuantity"], "value": volumes[tracking_uid]}
    elif code == "lesion-volume":
        total = round(sum(volumes.values()), 3)
        judged["valueQuantity"] = {**observation["valueQuantity"], "value": total}
    elif code == "lesion-count":
        judged["valueInteger"] = sum(1 for v in volumes.values() if v > 0)
    return judged


def practitioner_id(fhir: FhirClient, username: str) -> str:
    """The reader's Practitioner, made once by our user identifier; returns its id."""
    resource = Practitioner.model_validate(
        {
            "resourceType": "Practitioner",
            "identifier": [{"system": USER_SYSTEM, "value": username}],
            "active": True,
            "name": [{"text": username}],
        }
    ).model_dump(mode="json", exclude_none=True)
    stored, _created = fhir.conditional_create(resource, system=USER_SYSTEM, value=username)
    return str(stored["id"])


def judged_report(
    report: dict[str, Any],
    current: ReadingVerdict | None,
    per_finding: dict[str, ReadingVerdict],
    labels: dict[str, str],
    practitioners: dict[str, str],
) -> dict[str, Any]:
    """The report as the current verdicts make it: status, reader, conclusion."""
    judged = dict(report)
    judged["status"] = STATUS_OF[current.verdict if current else None]
    if current is not None:
        judged["resultsInterpreter"] = [
            {
                "reference": f"Practitioner/{practitioners[current.username]}",
                "display": current.username,
            }
        ]
    else:
        judged.pop("resultsInterpreter", None)
    ai_words = str(report.get("conclusion", "")).split(VERDICT_MARK)[0].rstrip()
    decided = [_said(current, None)] if current else []
    decided += [_said(v, labels.get(uid, "A finding")) for uid, v in sorted(per_finding.items())]
    judged["conclusion"] = f"{ai_words}{VERDICT_MARK} {' '.join(decided)}" if decided else ai_words
    return judged


def _said(verdict: ReadingVerdict, label: str | None) -> str:
    """One verdict in words: "Accepted by rad on 2026-12-07." / "Lesion 2 rejected by …: why." """
    what = f"{label} {verdict.verdict}" if label else verdict.verdict.capitalize()
    sentence = f"{what} by {verdict.username} on {as_utc(verdict.at):%Y-%m-%d %H:%M} UTC"
    return f"{sentence}: {verdict.reason.rstrip('.')}." if verdict.reason else f"{sentence}."


def verdict_provenance(verdict: ReadingVerdict, target: str, practitioner: str) -> dict[str, Any]:
    """The Provenance of one verdict: the reader verified the target (id from the verdict's
    uid: written by PUT, once)."""
    reason = f"{verdict.verdict}: {verdict.reason}" if verdict.reason else verdict.verdict
    provenance = {
        "resourceType": "Provenance",
        "id": f"nn-verdict-{verdict.uid}",
        "target": [{"reference": target}],
        "recorded": as_utc(verdict.at).isoformat(),
        "activity": {"coding": [_VERIFY], "text": f"AI result {verdict.verdict} by a reader"},
        "reason": [{"text": reason}],
        "agent": [
            {
                "type": {"coding": [_VERIFIER]},
                "who": {"reference": f"Practitioner/{practitioner}", "display": verdict.username},
            }
        ],
    }
    return Provenance.model_validate(provenance).model_dump(mode="json", exclude_none=True)
