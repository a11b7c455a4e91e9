"""One line per request in the webapp's log, carrying its correlation ids.

The outermost WSGI layer: it fixes the request id once (nginx's X-Request-ID, or ours when the
webapp is called directly) so the log line, the audit row and nginx's access line agree; sets
the ids in force while the request is handled (`common.logs.correlation`); and, once the answer
starts, logs method, route, status and time to the answer. The route is the pattern Flask
matched (`/api/patients/<mrn>`), never the path, which may carry an MRN or anything a caller
typed: unmatched paths are logged as `<unmatched>`, gate requests as the gate's root (the audit
trail has each one's study and outcome). The query string is never logged: a viewer link
carries its token there. Image reads the gate allows are logged at DEBUG only (one
per frame, and the audit trail has each), as are nginx's allowed questions for the Prefect UI;
everything else at INFO, 5xx at ERROR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from common.logs import correlation
from webapp.context import STUDY_KEY, request_id_from
from webapp.gate import is_gate_path
from webapp.gate_paths import DICOMWEB_ROOT, WADO_URI_ROOT

log = logging.getLogger("webapp.requests")

ROUTE_KEY = "neuronova.route"  # set by the Flask app once it has matched a route

# Asked many times a page (nginx's question before each Prefect UI request): DEBUG when allowed.
QUIET_PATHS = frozenset({"/api/admin/ui-auth"})

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class RequestLog:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        request_id = request_id_from(environ)
        environ["HTTP_X_REQUEST_ID"] = request_id  # every later reader gets this same id
        started = time.perf_counter()
        status: list[int] = []

        def recording_start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(int(line.split(" ", 1)[0]))
            return start_response(line, headers, exc_info)

        with correlation(request_id=request_id):
            result = self.app(environ, recording_start_response)
            self._log(environ, status[0] if status else 0, time.perf_counter() - started)
        return result

    @staticmethod
    def _log(environ: Environ, status: int, seconds: float) -> None:
        path = str(environ.get("PATH_INFO", ""))
        level = (
            logging.ERROR
            if status >= 500
            else logging.DEBUG
            if status < 400 and (is_gate_path(path) or path in QUIET_PATHS)
            else logging.INFO
        )
        if not log.isEnabledFor(level):
            return
        study = environ.get(STUDY_KEY)
        log.log(
            level,
            "%s %s %d %.1f ms",
            environ.get("REQUEST_METHOD", "-"),
            _route(environ, path),
            status,
            seconds * 1000,
            extra={"study_uid": study} if study else None,
        )


def _route(environ: Environ, path: str) -> str:
    """What the log line names: a route pattern, the gate's root, or `<unmatched>`."""
    route = environ.get(ROUTE_KEY)
    if isinstance(route, str):
        return route
    if is_gate_path(path):
        return WADO_URI_ROOT if path == WADO_URI_ROOT else DICOMWEB_ROOT + "/…"
    return "<unmatched>"
