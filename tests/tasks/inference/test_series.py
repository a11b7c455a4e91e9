"""Which series the model reads, and a study with none said plainly."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.inference.series import NoSuitableSeries, choose_series


def _series(sid: str, modality: str, description: str, count: int, **tags: str) -> dict[str, Any]:
    main = {"Modality": modality, "SeriesDescription": description, "SeriesInstanceUID": sid}
    return {"ID": f"orthanc-{sid}", "MainDicomTags": main | tags, "Instances": ["x"] * count}


BRAIN_STUDY = {"StudyDescription": "MR BRAIN W/O"}


@pytest.mark.parametrize(
    ("study", "series", "require_brain", "chosen"),
    [
        (BRAIN_STUDY, [_series("1", "MR", "T1 sag", 100), _series("2", "MR", "AX FLAIR", 40)],
         False, "2"),
        (BRAIN_STUDY, [_series("1", "MR", "T1", 100), _series("2", "MR", "T2 tse", 40)],
         False, "2"),
        (BRAIN_STUDY, [_series("1", "MR", "DWI", 30), _series("2", "MR", "T1 mprage", 176)],
         False, "2"),
        ({}, [_series("1", "MR", "FLAIR", 40), _series("2", "MR", "T1", 60, BodyPartExamined="HEAD")],
         True, "2"),
        ({}, [_series("1", "MR", "ax flair", 40)], False, "1"),  # manual run: read anyway
        (BRAIN_STUDY, [_series("1", "MR", "FLAIR", 4), _series("2", "MR", "T1", 20)], False, "2"),
    ],
)  # fmt: skip
def test_the_series_to_read(
    study: dict[str, str], series: list[dict[str, Any]], require_brain: bool, chosen: str
) -> None:
    choice = choose_series(study, series, min_slices=16, require_brain=require_brain)
    assert choice.series_uid == chosen and choice.orthanc_id == f"orthanc-{chosen}"


@pytest.mark.parametrize(
    ("series", "require_brain", "message"),
    [
        ([_series("1", "CT", "Head 5 mm", 40)], False, r"no MR series.*CT 'Head 5 mm' \(40"),
        ([_series("1", "MR", "FLAIR", 8)], False, "at least 16 slices"),
        ([], False, "no series"),
        ([_series("1", "MR", "knee PD", 40)], True, "says it is of the head"),
    ],
)
def test_nothing_to_read_is_said_plainly(
    series: list[dict[str, Any]], require_brain: bool, message: str
) -> None:
    with pytest.raises(NoSuitableSeries, match=message):
        choose_series({}, series, min_slices=16, require_brain=require_brain)
