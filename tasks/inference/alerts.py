"""Alerts through Redis pub/sub: a flow announces a result, the webapp's alert streams pass it
on to the clinicians allowed to see the study (`webapp/alerts.py`).

An alert is a nudge, not the record: the result is already in Orthanc, FHIR and the database
when it is sent, so a Redis that is down costs the alert (logged), never the result. It carries
identifiers and counts only, no names or free text.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis

from common.errors import NeuroNovaError, TransientUpstreamError
from common.settings import Settings

log = logging.getLogger(__name__)

AI_RESULT = "ai-result"
# The AI run's state changed (queued, running, failed, done, none): the worklist updates the row.
AI_STATE = "ai-state"
# A reader gave a verdict on a reading (accepted, rejected, corrected): the row's review state.
AI_VERDICT = "ai-verdict"
# Every kind an alert may have; the streams pass on nothing else (an event's name is a kind).
ALERT_KINDS = frozenset({AI_RESULT, AI_STATE, AI_VERDICT})


class AlertPublisher:
    """Publishes alerts on one Redis channel."""

    def __init__(self, redis_url: str, channel: str, *, timeout_s: float = 5.0) -> None:
        self.channel = channel
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertPublisher:
        """A publisher on the configured Redis and alert channel."""
        url = settings.resolved_redis_url
        if not url:
            raise NeuroNovaError("alerts are not configured: set NEURONOVA_REDIS_URL")
        return cls(url, settings.alerts_channel)

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> AlertPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def publish(self, kind: str, study_uid: str, patient_id: str, facts: dict[str, Any]) -> int:
        """Send one alert; returns how many alert streams heard it (0 is fine: nobody online)."""
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}; known: {sorted(ALERT_KINDS)}")
        message = {
            "kind": kind,
            "study_instance_uid": study_uid,
            "patient_id": patient_id,
            "at": datetime.now(UTC).isoformat(),
            **facts,
        }
        try:
            return int(self._redis.publish(self.channel, json.dumps(message)))
        except redis.RedisError as err:
            raise TransientUpstreamError(f"Redis did not take the alert: {err}") from err


_SUBSCRIBE_TIMEOUT_S = 5.0


def subscribe_to_alerts(settings: Settings) -> redis.client.PubSub:
    """A subscription to the configured alert channel (the webapp's alert streams read it).

    Raises `redis.RedisError` when Redis cannot be reached; the caller answers 503.
    """
    url = settings.resolved_redis_url
    if not url:
        raise NeuroNovaError("alerts are not configured: set NEURONOVA_REDIS_URL")
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    pubsub = client.pubsub()
    pubsub.subscribe(settings.alerts_channel)
    # Wait for Redis to confirm: once the caller's stream is open, an alert published at once
    # must reach it (SUBSCRIBE is only in a socket buffer until Redis has read it).
    deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT_S
    while True:
        confirmed = pubsub.get_message(timeout=0.5)
        if confirmed is not None and confirmed["type"] == "subscribe":
            break
        if time.monotonic() > deadline:
            pubsub.close()
            raise redis.TimeoutError("Redis did not confirm the alert subscription")
    pubsub.ignore_subscribe_messages = True
    return pubsub


def announce_ai_state(
    settings: Settings, study_uid: str, patient_id: str, state: str | None
) -> None:
    """Tell the open worklists that a study's AI run moved on; a Redis that is down costs only
    the live update (the worklist shows the state on its next load), never the run."""
    if not settings.resolved_redis_url:
        return
    try:
        with AlertPublisher.from_settings(settings) as publisher:
            publisher.publish(AI_STATE, study_uid, patient_id, {"ai_state": state})
    except TransientUpstreamError as err:
        log.warning("the AI state of study %s was not announced: %s", study_uid, err)


def announce_verdict(
    settings: Settings, study_uid: str, patient_id: str, facts: dict[str, Any]
) -> None:
    """Tell the open worklists that a reader judged a reading (identifiers and the verdict
    only: no reason, no name); a Redis that is down costs only the live update."""
    if not settings.resolved_redis_url:
        return
    try:
        with AlertPublisher.from_settings(settings) as publisher:
            publisher.publish(AI_VERDICT, study_uid, patient_id, facts)
    except TransientUpstreamError as err:
        log.warning("the verdict on study %s was not announced: %s", study_uid, err)


def ai_result_facts(result: dict[str, Any]) -> dict[str, Any]:
    """What a clinician's alert says about an AI result (run_inference's summary)."""
    return {
        "model": f"{result['model']['name']} {result['model']['version']}",
        "lesion_count": result["lesion_count"],
        "lesion_volume_ml": result["lesion_volume_ml"],
        "seg_series_instance_uid": result["seg"]["series_instance_uid"],
        "note": "AI generated, not for clinical use",
    }
