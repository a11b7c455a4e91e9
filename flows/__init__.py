"""Prefect flows, one per file: they sequence tasks, branch and decide; tasks do the work."""

from typing import Any

# The flows whose return value another process reads back: the demo and ingest's hand-offs
# trigger them as deployment runs (`run_deployment`) on a worker. Their reports (plain dicts)
# are kept as JSON in Prefect's result storage (PREFECT_RESULTS_LOCAL_STORAGE_PATH, which the
# local stack points at `var/prefect-results`); task results are not kept.
REPORTED: dict[str, Any] = {"persist_result": True, "result_serializer": "json"}
