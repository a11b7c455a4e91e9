"""The Prefect tasks of ingest: thin wrappers that the `ingest_study` flow sequences.

Task runs are sized per batch (`NEURONOVA_INGEST_BATCH_SIZE` inputs), not per file, so that
Prefect's few milliseconds per task run stay small beside the work.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from common.settings import Settings
from tasks.ingest.batch import ingest_batch
from tasks.ingest.inputs import InputRef, collect_inputs
from tasks.ingest.limits import IngestLimits
from tasks.ingest.prepare import FileOutcome
from tasks.retry import network_retries


@task(name="collect_inputs")
def collect_inputs_task(path: str, limits: IngestLimits | None = None) -> list[InputRef]:
    """List every file (and zip member) under `path`, links not followed, archives bounded."""
    return collect_inputs(Path(path), limits)


# The flow applies `settings.orthanc_retry_delays_s` with `with_options` (a setting, read at the
# flow's start); these are the delays of a caller that does not.
@task(name="ingest_batch", **network_retries())
def ingest_batch_task(
    settings: Settings, refs: list[InputRef], remove_originals: bool = False
) -> list[FileOutcome]:
    """Ingest one batch: parse, validate, transcode, verify, store, read back, index."""
    return ingest_batch(settings, refs, remove_originals=remove_originals)
