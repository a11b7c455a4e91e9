"""The SEG's UIDs are stable per study, series read and model version; the AI state is recorded
and announced to the open worklists."""

from __future__ import annotations

import json
import time

import redis

from common.db import Study, session_scope
from common.settings import Settings
from tasks.inference.results import AiState, seg_uids, set_ai_state
from tests.support.web import IndexedStudy, index_study


def test_the_seg_uids_are_stable_per_series_and_model_version() -> None:
    first = seg_uids("1.2.3", "1.2.3.1", "model", "0.1.0")
    assert first == seg_uids("1.2.3", "1.2.3.1", "model", "0.1.0")
    assert first != seg_uids("1.2.3", "1.2.3.1", "model", "0.2.0")
    assert first != seg_uids("1.2.4", "1.2.3.1", "model", "0.1.0")
    assert first != seg_uids("1.2.3", "1.2.3.2", "model", "0.1.0")  # a later series: its own SEG
    assert len(set(first)) == 2 and all(len(uid) <= 64 for uid in first)


def test_a_change_of_the_ai_state_is_recorded_and_announced_once(stack_settings: Settings) -> None:
    """Each change is told to the open worklists (after it is committed); setting the same state
    again tells nothing; a Redis that is down costs the announcement, not the state."""
    study = IndexedStudy(
        "NN-STATE-01", "1.2.826.0.1.7101", "1.2.826.0.1.7101.1", ("1.2.826.0.1.7101.1.1",)
    )
    url = stack_settings.resolved_database_url
    index_study(url, study)
    assert stack_settings.resolved_redis_url
    listening = redis.Redis.from_url(stack_settings.resolved_redis_url).pubsub(
        ignore_subscribe_messages=True
    )
    listening.subscribe(stack_settings.alerts_channel)
    try:
        for state in (AiState.QUEUED, AiState.QUEUED, AiState.RUNNING, None):
            set_ai_state(stack_settings, study.study, state)
        heard = []
        deadline = time.monotonic() + 5
        while len(heard) < 3 and time.monotonic() < deadline:
            message = listening.get_message(timeout=0.5)
            if message is not None:
                heard.append(json.loads(message["data"]))
        assert listening.get_message(timeout=0.5) is None  # the repeated "queued" told nothing
    finally:
        listening.close()
    assert [(h["kind"], h["ai_state"], h["study_instance_uid"]) for h in heard] == [
        ("ai-state", "queued", study.study),
        ("ai-state", "running", study.study),
        ("ai-state", None, study.study),
    ]
    assert all(h["patient_id"] == study.patient_id for h in heard)

    no_redis = stack_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    set_ai_state(no_redis, study.study, AiState.FAILED)
    with session_scope(url) as session:
        row = session.get(Study, study.study)
        assert row is not None and row.ai_state == "failed"
