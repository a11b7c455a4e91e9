"""Writing to OpenEMR without ever creating a patient twice.

A create whose answer was lost (a timeout, a dropped connection) may or may not have happened.
So before any second POST the MRN is looked up: found, the first one landed; not found, it is
safe to try again. The MRN (`pubpid`) is the business key that makes this idempotent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from common.errors import PermanentUpstreamError, TransientUpstreamError
from tasks.patients.emr import OpenEmrClient

log = logging.getLogger(__name__)

_ATTEMPTS = 3


def ensure_emr_patient(emr: OpenEmrClient, fields: dict[str, str]) -> dict[str, Any]:
    """The EMR's patient with `fields["pubpid"]`, created once if it does not exist."""
    mrn = fields.get("pubpid", "")
    if not mrn:
        raise PermanentUpstreamError("an EMR patient needs its MRN (pubpid)")
    for attempt in range(1, _ATTEMPTS + 1):
        existing = emr.find_by_mrn(mrn)
        if existing is not None:
            return existing
        try:
            created = emr.create_patient(fields)
        except TransientUpstreamError as err:
            # The create may have landed: the next turn of the loop looks before posting again.
            log.warning("EMR create for an MRN lost its answer (%s); looking it up", err)
            time.sleep(0.5 * attempt)
            continue
        found = emr.get_patient(str(created.get("uuid", ""))) if created.get("uuid") else None
        return found or {**fields, **created}
    existing = emr.find_by_mrn(mrn)
    if existing is not None:
        return existing
    raise TransientUpstreamError(
        f"EMR create for MRN {mrn} did not complete after {_ATTEMPTS} tries"
    )
