"""Audit rows and the closed sets they draw on: stored as the plain strings they always were."""

from __future__ import annotations

import pytest

from webapp.audit import Action, AuditRecord
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
