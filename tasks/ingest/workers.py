"""The worker processes that prepare inputs: read, parse, validate, transcode, verify.

That work is CPU-bound and mostly holds the GIL (pydicom, OpenJPH's encode). On the batch's
threads it used one core, and every answer from Orthanc then waited for the GIL before the
upload threads could go on, so uploads stalled while inputs were transcoded. In worker
processes it runs on every core, beside the threads that upload.

Workers are forked by a forkserver, never by `fork` from the caller (which has threads:
Prefect's, the batch's) and not by `spawn` (each worker would import the caller's main module
and the DICOM stack again: seconds). The forkserver imports both once, so a worker starts in
milliseconds. The pool lives as long as the process: a long-lived Prefect worker starts it
once, the CLI once per run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
# What the workers import before the first input arrives (the forkserver imports it once).
_PRELOAD = "tasks.ingest.prepare"


def prepare_pool(processes: int = 0) -> ProcessPoolExecutor:
    """The process pool, started on first use (`processes` 0: one per CPU we may use)."""
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([*_main_module(), _PRELOAD])
            _pool = ProcessPoolExecutor(
                max_workers=processes or len(os.sched_getaffinity(0)), mp_context=context
            )
        return _pool


def running_pool() -> ProcessPoolExecutor | None:
    """The pool if one was started (and has not broken), else None."""
    with _lock:
        return _pool


def start_workers(processes: int = 0) -> None:
    """Start the pool and its first worker in the background, so that the forkserver's imports
    run beside the caller's own start-up (the CLI's imports of Prefect and the flows) instead
    of after it, when the first batch waits for them."""
    threading.Thread(
        target=_start, args=(processes,), name="ingest-workers-start", daemon=True
    ).start()


def _start(processes: int) -> None:
    try:
        prepare_pool(processes).submit(os.getpid)
    except Exception:  # the first batch starts the pool again, or says why it cannot
        log.debug("could not start the ingest workers ahead of time", exc_info=True)


def discard_pool(pool: ProcessPoolExecutor) -> None:
    """Forget a pool that broke (a worker died): the next batch starts a new one."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _main_module() -> list[str]:
    """The caller's main module as the forkserver's preload names it, so that workers forked
    from it find it imported already (multiprocessing imports it in every new process)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is None:
        return ["__main__"] if getattr(main, "__file__", None) else []
    # A package's __main__ runs its program on import; multiprocessing leaves those alone too.
    return [] if name == "__main__" or name.endswith(".__main__") else [name]
