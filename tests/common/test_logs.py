"""Structured logs: the correlation ids on every line, in Prefect's task threads too, and the
webapp's request lines (request id kept, no query string, the study named)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from common.logs import CorrelationFilter, JsonFormatter, correlation, current_correlation
from webapp.context import STUDY_KEY
from webapp.request_log import ROUTE_KEY, RequestLog


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines, with the correlation filter, into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("tasks.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, buffer
    logger.removeHandler(handler)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_ids_in_force_are_on_each_line_and_end_with_their_block(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = json_lines
    with correlation(request_id="r1"):
        with correlation(study_uid="1.2.3", flow_run_id=None):
            assert current_correlation() == {"request_id": "r1", "study_uid": "1.2.3"}
            logger.info("inner %d", 1)
        logger.warning("outer")
    logger.info("outside")
    inner, outer, outside = _lines(buffer)
    assert inner["message"] == "inner 1" and inner["service"] == "test"
    assert (inner["request_id"], inner["study_uid"]) == ("r1", "1.2.3")
    assert "flow_run_id" not in inner  # None is not an id
    assert outer["request_id"] == "r1" and "study_uid" not in outer
    assert outer["level"] == "WARNING" and outer["logger"] == "tasks.test_logs"
    assert "request_id" not in outside and current_correlation() == {}


def test_a_records_own_ids_win_and_exceptions_are_kept(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = json_lines
    with correlation(study_uid="outer"):
        try:
            raise ValueError("bad slice")
        except ValueError:
            logger.exception("failed", extra={"study_uid": "own"})
    (line,) = _lines(buffer)
    assert line["study_uid"] == "own"
    assert "ValueError: bad slice" in line["exc"]


def test_ids_reach_prefect_task_threads_with_the_run_ids(
    prefect_harness: None, json_lines: tuple[logging.Logger, io.StringIO]
) -> None:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    logger, buffer = json_lines

    @task
    def work(n: int) -> int:
        logger.info("slice %d", n)  # a plain module logger, as in tasks/
        return n

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))  # type: ignore[arg-type]
    def fan_out() -> list[int]:
        with correlation(study_uid="1.2.840.99"):
            return [f.result() for f in [work.submit(n) for n in range(3)]]

    state = fan_out(return_state=True)
    assert state.is_completed()
    lines = _lines(buffer)
    assert sorted(line["message"] for line in lines) == ["slice 0", "slice 1", "slice 2"]
    assert {line["study_uid"] for line in lines} == {"1.2.840.99"}
    assert {line["flow_run_id"] for line in lines} == {str(state.state_details.flow_run_id)}
    assert len({line["task_run_id"] for line in lines}) == 3


def _app(seen: list[dict[str, Any]], status: str = "200 OK") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(
            {
                "request_id": current_correlation().get("request_id"),
                "header": environ.get("HTTP_X_REQUEST_ID"),
            }
        )
        environ[STUDY_KEY] = "1.2.3.4"
        if environ["PATH_INFO"].startswith("/api/"):  # as Flask's routing notes it
            environ[ROUTE_KEY] = environ["PATH_INFO"]
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def _call(app: Any, path: str, query: str, headers: dict[str, str]) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query} | headers
    list(app(environ, lambda *args: None))


def test_the_request_line_keeps_nginxs_id_names_the_study_and_never_the_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[dict[str, Any]] = []
    caplog.set_level(logging.INFO, logger="webapp.requests")
    rid = "0123456789abcdef0123456789abcdef"
    _call(RequestLog(_app(seen)), "/api/studies", "token=eyJsecret", {"HTTP_X_REQUEST_ID": rid})
    assert seen == [{"request_id": rid, "header": rid}]
    (record,) = caplog.records
    assert record.getMessage().startswith("GET /api/studies 200 ")
    assert record.study_uid == "1.2.3.4"  # type: ignore[attr-defined]
    assert "eyJ" not in caplog.text and "token" not in caplog.text


def test_without_nginx_one_id_is_made_and_gate_reads_log_only_when_denied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[dict[str, Any]] = []
    caplog.set_level(logging.INFO, logger="webapp.requests")
    _call(RequestLog(_app(seen)), "/api/health", "", {})
    assert seen[0]["request_id"] == seen[0]["header"] and len(seen[0]["header"]) == 32
    _call(RequestLog(_app(seen)), "/dicom-web/studies/1.2.3.4/metadata", "", {})  # allowed
    _call(RequestLog(_app(seen, "403 Forbidden")), "/dicom-web/studies/1.2.3.4/metadata", "", {})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and " 403 " in messages[1]


def test_a_plain_thread_pool_keeps_the_ids_when_asked(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from common.logs import carry_context

    logger, buffer = json_lines
    with correlation(study_uid="1.2.5"), ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(carry_context(lambda n: logger.info("carried %d", n)), range(6)))
        list(pool.map(lambda n: logger.info("bare %d", n), range(2)))
    lines = _lines(buffer)
    carried = [x for x in lines if x["message"].startswith("carried")]
    bare = [x for x in lines if x["message"].startswith("bare")]
    assert len(carried) == 6 and all(x["study_uid"] == "1.2.5" for x in carried)
    assert len(bare) == 2 and all("study_uid" not in x for x in bare)  # why the helper exists


def test_lines_name_route_patterns_never_mrns_or_unmatched_paths(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from pydantic import SecretStr

    from common.settings import Settings
    from webapp import create_app

    caplog.set_level(logging.INFO, logger="webapp.requests")
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'nn.db'}",
        jwt_secret=SecretStr("t" * 48),
    )
    client = create_app(settings).test_client()
    client.get("/api/patients/NN-SECRET-MRN-42")  # 401: no token, still one line
    client.get("/nothing/NN-SECRET-MRN-43")
    client.get("/dicom-web/studies/1.2.3/series/NN-SECRET-MRN-44")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("GET /api/patients/<mrn> 401 ")
    assert messages[1].startswith("GET <unmatched> 404 ")
    assert messages[2].startswith("GET /dicom-web/… 401 ")
    assert "NN-SECRET" not in caplog.text
