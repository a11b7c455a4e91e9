"""The SEG's UIDs are stable per study, series read and model version."""

from __future__ import annotations

from tasks.inference.results import seg_uids


def test_the_seg_uids_are_stable_per_series_and_model_version() -> None:
    first = seg_uids("1.2.3", "1.2.3.1", "model", "0.1.0")
    assert first == seg_uids("1.2.3", "1.2.3.1", "model", "0.1.0")
    assert first != seg_uids("1.2.3", "1.2.3.1", "model", "0.2.0")
    assert first != seg_uids("1.2.4", "1.2.3.1", "model", "0.1.0")
    assert first != seg_uids("1.2.3", "1.2.3.2", "model", "0.1.0")  # a later series: its own SEG
    assert len(set(first)) == 2 and all(len(uid) <= 64 for uid in first)
