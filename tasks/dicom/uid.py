"""The one rule for a DICOM UID, used at ingest, in the gate and in viewer links.

PS3.5 §9.1 says a UID is at most 64 characters of digits and dots, and that no component but
"0" itself starts with a 0. Real archives break the second half: scanners and older toolkits
wrote components like `0113654`, and a hospital's archive is full of them. Refusing them would
store a study at ingest that no one could then open. They carry no risk: what makes an
identifier dangerous where it is used (in Orthanc look-ups, in the gate's internal URIs) is any
character other than a digit or a dot, an empty component ("..", a leading or trailing dot),
or a length no parser expects, and those are refused.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64

# Digits, single dots between non-empty components; zero-padded components accepted (above).
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_uid(value: str) -> bool:
    """A UID as archives hold them: 1–64 digits and dots, no empty component."""
    return 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None
