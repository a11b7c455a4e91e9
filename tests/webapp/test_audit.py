"""Audit rows and the closed sets they draw on: stored as the plain strings they always were."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from common.db import AuditEvent, migrate, session_scope
from webapp.audit import DENIALS_PER_S, Action, AuditLog, AuditRecord
from webapp.gate_paths import GateKind


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        (GateKind.FRAMES, 200, ("frames", "allowed")),
        (GateKind.DICOMWEB, 401, ("dicomweb", "denied")),
        (Action.VIEWER_LINK, 403, ("viewer-link", "denied")),
        (Action.LOGIN, 302, ("login", "allowed")),
    ],
)
def test_a_row_holds_plain_strings(
    action: Action | GateKind, status: int, expected: tuple[str, str]
) -> None:
    row = AuditRecord(action=action, status=status, request_id="req-1").row()
    assert (row["action"], row["outcome"]) == expected
    assert type(row["action"]) is str and type(row["outcome"]) is str


def test_a_flood_of_denials_is_counted_not_written_one_by_one(tmp_path: Path) -> None:
    """Past DENIALS_PER_S, alike denials become one row per interval that says how many:
    the database stays responsive and nothing goes uncounted."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    migrate(url)
    log = AuditLog(url)
    flood = 20 * DENIALS_PER_S
    for n in range(flood):
        log.record_denial(
            AuditRecord(
                action=GateKind.DICOMWEB,
                status=401,
                request_id=f"req-{n}",
                client_addr="10.6.6.6",
                reason="no bearer token",
            )
        )
    log.flush()
    with session_scope(url) as session:
        rows = list(session.exec(select(AuditEvent)))
    one_by_one = [r for r in rows if not r.request_id.startswith("flood-")]
    counted = [r for r in rows if r.request_id.startswith("flood-")]
    assert len(rows) < flood // 4  # far fewer rows than requests
    assert DENIALS_PER_S <= len(one_by_one) < 2 * DENIALS_PER_S
    total = len(one_by_one) + sum(int(r.reason.split(" ", 1)[0]) for r in counted)  # type: ignore[union-attr]
    assert total == flood
    assert all(r.reason.endswith("no bearer token") for r in counted)  # type: ignore[union-attr]
    assert all(r.outcome == "denied" and r.client_addr == "10.6.6.6" for r in rows)
