"""The one grammar of a medical record number (MRN), and how one goes into a FHIR search.

An MRN is 1–64 characters: ASCII letters, digits, `-`, `.` and `_`, starting with a letter or
a digit (`A-000123`, `NN.2024.17`). The patient API, the care list and the CLI accept nothing
else, so an MRN never carries FHIR's search syntax (`,` means OR, `|` splits system and value,
`$` composites, `\\` escapes) nor anything a path or a log line would misread. FHIR search
values are escaped all the same (`fhir_token`): the grammar is the first fence, not the only.
"""

from __future__ import annotations

import re

MRN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MRN_GRAMMAR = "1-64 characters: letters, digits, '-', '.', '_', starting with a letter or digit"
_FHIR_SPECIAL = re.compile(r"([\\,|$])")


class InvalidMrn(ValueError):
    def __init__(self, mrn: str) -> None:
        super().__init__(f"not an MRN ({MRN_GRAMMAR}): {mrn[:70]!r}")


def is_mrn(value: str) -> bool:
    return MRN_RE.fullmatch(value) is not None


def checked_mrn(value: str) -> str:
    """The MRN itself, or InvalidMrn saying what an MRN looks like."""
    if not is_mrn(value):
        raise InvalidMrn(value)
    return value


def fhir_escape(value: str) -> str:
    """A value as a FHIR search parameter takes it: `\\ , | $` escaped with a backslash."""
    return _FHIR_SPECIAL.sub(r"\\\1", value)


def fhir_token(system: str, value: str) -> str:
    """A token search value `system|value`, each side escaped, for `identifier=`."""
    return f"{fhir_escape(system)}|{fhir_escape(value)}"
