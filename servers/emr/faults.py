"""Fault injection for tests, on a control path a real OpenEMR does not have (`/_emulator/…`):
latency, the next N answers as 500/503, the next N requests hanging past the client's timeout
(after the write was applied, for the "timeout after a create" case), and expiring every token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, Response, jsonify, request

if TYPE_CHECKING:
    from servers.emr.emulator import EmrState


@dataclass
class Faults:
    latency_s: float = 0.0
    fail_next: list[int] = field(default_factory=list)  # statuses for the next answers
    hang_next: int = 0  # writes (POST, PUT) that are applied, then answered after hang_s
    hang_s: float = 30.0
    calls: int = 0  # API calls answered (for tests that count them)


def add_fault_injection(app: Flask, state: EmrState) -> None:
    """Apply `state.faults` to every API call, and serve the control path that sets them."""

    @app.before_request
    def _faults() -> tuple[Response, int] | None:
        if request.path.startswith("/_emulator") or request.path == "/healthz":
            return None
        faults = state.faults
        if faults.latency_s:
            time.sleep(faults.latency_s)
        with state.lock:
            faults.calls += 1
            status = faults.fail_next.pop(0) if faults.fail_next else None
        if status is not None:
            return jsonify({"error": "server_error", "error_description": "injected"}), status
        return None

    @app.after_request
    def _hang(response: Response) -> Response:
        # The write is done; the answer comes too late for the client (a timeout after a POST).
        if not request.path.startswith("/apis/") or request.method not in ("POST", "PUT"):
            return response
        with state.lock:
            hang = state.faults.hang_next > 0
            if hang:
                state.faults.hang_next -= 1
        if hang:
            time.sleep(state.faults.hang_s)
        return response

    # ---- the emulator's own control path (tests only; loopback)

    @app.post("/_emulator/faults")
    def set_faults() -> Response:
        body = request.get_json(silent=True) or {}
        with state.lock:
            state.faults = Faults(
                latency_s=float(body.get("latency_s", 0)),
                fail_next=[int(s) for s in body.get("fail_next", [])],
                hang_next=int(body.get("hang_next", 0)),
                hang_s=float(body.get("hang_s", 30)),
            )
            if body.get("expire_tokens"):
                state.tokens = {t: 0.0 for t in state.tokens}
        return jsonify({"status": "ok"})

    @app.get("/_emulator/faults")
    def get_faults() -> Response:
        return jsonify(
            {"calls": state.faults.calls, "pending_failures": len(state.faults.fail_next)}
        )
