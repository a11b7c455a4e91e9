"""The one retry policy of every network task: retry what a retry can fix, nothing else.

A task that talks to Orthanc, FHIR, OpenEMR or Redis gets its Prefect options from
`network_retries`: a list of delays (one retry per delay), the same jitter everywhere, and
`retry_if_transient`, so a deterministic failure (a 4xx, a conflict, bad input) fails at once
instead of being repeated. The clients under the tasks carry their own short request timeouts
and absorb the briefest hiccups; the task's retries are for outages of seconds to a minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from common.errors import TransientUpstreamError

# Spread retries so that many batches do not hit a recovering service at the same moment.
RETRY_JITTER_FACTOR = 0.5

# The delays a network task waits before each retry, unless its caller says otherwise: enough
# to ride out a service restart (about 40 s in all) without holding a worker for minutes.
STANDARD_DELAYS_S: tuple[float, ...] = (2, 10, 30)
# For a look-up that a person or a flow waits on (a patient during ingest).
QUICK_DELAYS_S: tuple[float, ...] = (1, 5, 15)
# For a nudge whose loss costs little (an alert: the result is stored everywhere already).
NUDGE_DELAYS_S: tuple[float, ...] = (1, 3)


def retry_if_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only `TransientUpstreamError`s."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TransientUpstreamError)


class RetryOptions(TypedDict):
    """The keyword arguments of `@task` / `Task.with_options` that make up the policy."""

    retries: int
    retry_delay_seconds: list[float]
    retry_jitter_factor: float
    retry_condition_fn: Any


def network_retries(delays_s: Sequence[float] = STANDARD_DELAYS_S) -> RetryOptions:
    """Prefect task options: one retry per delay, jittered, of transient failures only."""
    return RetryOptions(
        retries=len(delays_s),
        retry_delay_seconds=[float(d) for d in delays_s],
        retry_jitter_factor=RETRY_JITTER_FACTOR,
        retry_condition_fn=retry_if_transient,
    )
