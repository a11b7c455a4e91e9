"""Structured logs: one JSON object per line, carrying the ids that tie one request or one study
together across the gateway, the webapp and the flows.

- `request_id`: nginx's `$request_id` (X-Request-ID), also in the audit trail's rows, so a log
  line, an nginx access line and an audit row of one request share it.
- `study_uid`: the StudyInstanceUID a request or a flow run works on. It is what links a
  viewer's image reads in the webapp's log to the ingest and inference runs on the workers.
- `flow_run_id` / `task_run_id`: set by Prefect on its run loggers' records.

`correlation(study_uid=...)` sets ids for a block of code (a request, a flow run); every record
logged inside it carries them, also from Prefect's task threads, which run in a copy of the
caller's context. Values are identifiers only: never a token, a password or a patient's name.

The services install it: the webapp at start (`configure_logging`), the Prefect workers through
`deployments/logging.yml` (PREFECT_LOGGING_SETTINGS_PATH).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CORRELATION_FIELDS: tuple[str, ...] = ("request_id", "study_uid", "flow_run_id", "task_run_id")

# Replaced, never mutated, so a copied context (a task thread) cannot change its parent's ids.
_correlation: ContextVar[dict[str, str] | None] = ContextVar("neuronova_correlation", default=None)


def _ids() -> dict[str, str]:
    return _correlation.get() or {}


@contextlib.contextmanager
def correlation(**ids: str | None) -> Iterator[dict[str, str]]:
    """Add ids (None ones are skipped) for the duration of the block; inner blocks add to
    outer ones. Yields the ids now in force."""
    current = _ids() | {k: v for k, v in ids.items() if v}
    token = _correlation.set(current)
    try:
        yield current
    finally:
        _correlation.reset(token)


def carry_context[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, run in a copy of the caller's context whichever thread calls it: for plain thread
    pools (`pool.map(carry_context(f), items)`), whose threads otherwise log without the
    correlation ids and the Prefect run (Prefect's own task runners copy it already)."""
    parent = contextvars.copy_context()

    def in_context(*args: P.args, **kwargs: P.kwargs) -> R:
        return parent.copy().run(fn, *args, **kwargs)  # a copy each: threads run at once

    return in_context


def current_correlation() -> dict[str, str]:
    """The ids in force here."""
    return dict(_ids())


class CorrelationFilter(logging.Filter):
    """Copies the ids in force onto each record (a record's own extra wins), and the Prefect
    run's ids onto records of plain loggers (`tasks.ingest.batch`…) logged inside a run."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_prefect_run_ids() | _ids()).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _prefect_run_ids() -> dict[str, str]:
    """The flow and task run in progress, when Prefect is loaded and one is."""
    if "prefect.context" not in sys.modules:  # never import Prefect just to log
        return {}
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run is not None:
        return {
            "flow_run_id": str(task_run.task_run.flow_run_id or ""),
            "task_run_id": str(task_run.task_run.id),
        }
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return {"flow_run_id": str(flow_run.flow_run.id)}
    return {}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", <ids>, "exc"}`, one line per record."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.service:
            line["service"] = self.service
        for key in CORRELATION_FIELDS:
            value = getattr(record, key, None)
            if value:
                line[key] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


# Our own packages log at INFO; libraries stay at WARNING (httpx alone logs every request).
OWN_LOGGERS: tuple[str, ...] = ("common", "tasks", "flows", "webapp", "neuronova", "deployments")


def configure_logging(service: str, fmt: str = "json", level: str = "INFO") -> None:
    """Send every record to stderr, as JSON (`fmt="json"`) or as text, with the ids in force.
    Replaces the handlers of the root logger: call once, at a service's start."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(
        JsonFormatter(service)
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    if fmt != "json":
        handler.addFilter(_default_ids)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _default_ids(record: logging.LogRecord) -> bool:
    """The text format names `request_id`: give records outside a request a dash."""
    if not hasattr(record, "request_id"):
        record.request_id = "-"
    return True
