"""The one UID rule (ingest, gate, links): what real archives hold passes, what could steer a
path or a parser does not."""

from __future__ import annotations

import pytest

from tasks.dicom.uid import is_uid


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("1.2.840.10008.1.2.4.201", True),
        ("0.1", True),
        ("1", True),
        ("1" * 64, True),
        # Zero-padded components break PS3.5 but fill real archives: accepted everywhere, so
        # that a study ingest stores is one the viewer can open.
        ("1.02.3", True),
        ("1.2.840.0113654.2.70.1.1", True),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2.3a", False),
        ("1" * 65, False),
        ("", False),
        ("1.2/3", False),
        ("%2e%2e", False),
        ("1.2.3\n", False),
        (" 1.2", False),
        ("1.\u0663", False),  # a digit, but not an ASCII one
    ],
)
def test_uid_syntax(value: str, ok: bool) -> None:
    assert is_uid(value) is ok
