"""Which series of a study the model reads: MR, of the head first, then FLAIR, then T2, then the
most slices; a study with none says what it held.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from common.errors import NeuroNovaError
from tasks.archive.orthanc import OrthancClient

# Words that place a study or series in the head, in the tags scanners fill in.
_BRAIN_WORDS = re.compile(
    r"brain|head|neuro|cereb|crani|skull|kopf|sch[aä]del|hirn|cerveau|t[eê]te"
)
_SEQUENCE_PREFERENCE = (re.compile(r"flair", re.I), re.compile(r"t2", re.I))


class NoSuitableSeries(NeuroNovaError):
    """The study has nothing the model can read (the message says what was there)."""


@dataclass(frozen=True)
class SeriesChoice:
    orthanc_id: str
    series_uid: str
    description: str
    instances: int
    brain_evidence: str | None  # the tag that says "head", or None


def is_brain_text(*values: str | None) -> str | None:
    """The first value that names the head or brain, or None."""
    for value in values:
        if value and _BRAIN_WORDS.search(value.lower()):
            return value
    return None


def choose_series(
    study_tags: dict[str, Any],
    series: list[dict[str, Any]],
    *,
    min_slices: int,
    require_brain: bool = False,
) -> SeriesChoice:
    """The MR series to read: of the head first, then FLAIR, then T2, then the most slices.

    `require_brain` (ingest's automatic trigger) skips series that no tag places in the head.
    """
    candidates = []
    seen = []
    for item in series:
        tags = item.get("MainDicomTags", {})
        modality = str(tags.get("Modality", ""))
        description = str(tags.get("SeriesDescription", ""))
        count = len(item.get("Instances", []))
        seen.append(f"{modality or '?'} '{description}' ({count} instances)")
        if modality != "MR" or count < min_slices:
            continue
        evidence = is_brain_text(
            tags.get("BodyPartExamined"),
            description,
            tags.get("ProtocolName"),
            study_tags.get("StudyDescription"),
        )
        candidates.append(
            SeriesChoice(
                item["ID"], str(tags.get("SeriesInstanceUID", "")), description, count, evidence
            )
        )
    if require_brain and candidates and not any(c.brain_evidence for c in candidates):
        raise NoSuitableSeries(
            "no MR series says it is of the head (BodyPartExamined, series or study description,"
            " protocol); the brain-lesion model was not run. `neuronova infer` reads it anyway"
        )
    candidates = [c for c in candidates if c.brain_evidence or not require_brain]
    if not candidates:
        raise NoSuitableSeries(
            f"no MR series with at least {min_slices} slices in this study "
            f"(found: {', '.join(seen) or 'no series'}); nothing for the brain-lesion model to read"
        )

    def rank(choice: SeriesChoice) -> tuple[int, int, int]:
        preference = next(
            (
                len(_SEQUENCE_PREFERENCE) - i
                for i, p in enumerate(_SEQUENCE_PREFERENCE)
                if p.search(choice.description)
            ),
            0,
        )
        return (choice.brain_evidence is not None, preference, choice.instances)

    return max(candidates, key=rank)


def only_series(series: list[dict[str, Any]], series_uids: list[str]) -> list[dict[str, Any]]:
    """Those of the study's series (Orthanc's answers) named by UID; NoSuitableSeries if none."""
    wanted = set(series_uids)
    kept = [s for s in series if s.get("MainDicomTags", {}).get("SeriesInstanceUID") in wanted]
    if not kept:
        raise NoSuitableSeries(
            f"none of the series asked for ({', '.join(sorted(wanted)) or 'none'}) is in the study"
        )
    return kept


def find_study_series(client: OrthancClient, study_uid: str) -> tuple[dict[str, Any], list[Any]]:
    """(the study's and its patient's main tags, its series) from Orthanc; NoSuitableSeries if
    the study is not there."""
    study_id = client.lookup(study_uid, "Study")
    if study_id is None:
        raise NoSuitableSeries(f"study {study_uid} is not in the archive (ingest it first)")
    study = client.study(study_id)
    tags = dict(study.get("PatientMainDicomTags", {})) | dict(study.get("MainDicomTags", {}))
    return tags, client.study_series(study_id)
