"""Inputs prepared in the worker processes: the same result as in-process, and a worker that
dies costs no input (the decode guard decides what is decoded again)."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tasks.ingest.batch import _prepared
from tasks.ingest.decode_guard import CRASHED, DecodeGuard
from tasks.ingest.inputs import InputRef
from tasks.ingest.limits import IngestLimits
from tasks.ingest.prepare import IngestStatus, prepare_input, prepare_inputs
from tasks.ingest.workers import prepare_pool, running_pool
from tests.support.dicom_factory import make_ct, write


def _inputs(folder: Path, count: int) -> list[InputRef]:
    return [InputRef(str(write(make_ct(i), folder / f"{i}.dcm"))) for i in range(count)]


def test_workers_prepare_exactly_what_this_process_would(tmp_path: Path) -> None:
    refs = _inputs(tmp_path / "inbox", 3)
    guard = DecodeGuard(tmp_path / "decoding")

    pool = prepare_pool(2)
    in_workers = pool.submit(prepare_inputs, refs, IngestLimits(), guard).result(timeout=120)

    assert running_pool() is pool  # kept for the next batch
    here = [prepare_input(ref, IngestLimits(), guard) for ref in refs]
    assert [i.result for i in in_workers] == [i.result for i in here]
    assert all(i.result is not None and i.outcome is None for i in in_workers)
    assert not list((tmp_path / "decoding").iterdir())  # no mark left behind


def test_inputs_of_a_worker_that_died_are_quarantined_or_prepared_here(tmp_path: Path) -> None:
    refs = _inputs(tmp_path / "inbox", 2)
    guard = DecodeGuard(tmp_path / "decoding")
    dying = guard.decoding(refs[0])  # the worker died while decoding the first input:
    dying.__enter__()  # its mark stays (kept referenced: collecting it would remove the mark)
    died: Future[list] = Future()
    died.set_exception(BrokenProcessPool("a worker died"))

    first, second = _prepared(died, refs, IngestLimits(), guard, None)

    assert first.outcome is not None and first.outcome.status == IngestStatus.QUARANTINED
    assert first.outcome.reason == CRASHED and first.result is None  # not decoded again
    assert second.outcome is None and second.result is not None  # prepared in this process
    assert dying is not None
