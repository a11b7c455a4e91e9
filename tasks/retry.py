"""Retry policy shared by the network tasks: retry what a retry can fix, nothing else."""

from __future__ import annotations

from typing import Any

from common.errors import TransientUpstreamError

RETRY_JITTER_FACTOR = 0.5  # spread retries so many batches do not hit a recovering service at once


def retry_if_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only `TransientUpstreamError`s."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TransientUpstreamError)
