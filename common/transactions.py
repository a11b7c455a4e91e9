"""Transactions that two requests may race for, run again when the database says they collided.

Two requests that write the same row at the same moment (two browsers spending one viewer
link, two tabs signing out one session) are told apart by the database, each in its own words:

- MariaDB 11.6.2 and newer (Debian 13's 11.8) run REPEATABLE READ with
  `innodb_snapshot_isolation=ON`: a transaction that read a row, then locks it after another
  transaction changed it, fails with 1020 `ER_CHECKREAD` ("Record has changed since last read").
  10.11 (Debian 12) and MySQL 8 let the write go on instead; the stack's own MariaDB turns the
  check on everywhere (neuronova/stack/mariadb.py), so both versions answer the same way.
- InnoDB may pick a deadlock victim (1213 `ER_LOCK_DEADLOCK`) among writers of one index range.
- SQLite in WAL mode refuses a reader's upgrade to writer when another writer committed after
  its snapshot (`SQLITE_BUSY_SNAPSHOT`), reported as "database is locked".

Each of them rolled the whole transaction back, and each means "do it again": a fresh
transaction sees what the winner committed and comes to the documented answer (the link is
spent, the session is closed already). `in_transaction` does that, a bounded number of times.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from common.db import session_scope
from common.errors import TransientUpstreamError

log = logging.getLogger(__name__)

ER_CHECKREAD = 1020
ER_LOCK_DEADLOCK = 1213
_MYSQL_CONFLICTS = frozenset({ER_CHECKREAD, ER_LOCK_DEADLOCK})
_ATTEMPTS = 5
_FIRST_DELAY_S = 0.01


def is_write_conflict(err: BaseException) -> bool:
    """Whether the database rolled the transaction back because another one raced it."""
    if not isinstance(err, DBAPIError) or isinstance(err, IntegrityError):
        return False
    args = getattr(err.orig, "args", ())
    if args and isinstance(args[0], int):  # pymysql: (code, message)
        return args[0] in _MYSQL_CONFLICTS
    return "database is locked" in str(err.orig)


def in_transaction[T](
    database_url: str,
    work: Callable[[Session], T],
    *,
    also_retry: tuple[type[Exception], ...] = (),
    attempts: int = _ATTEMPTS,
) -> T:
    """`work(session)` in a transaction of its own, committed; run again from the start when
    it lost a race (`is_write_conflict`, or one of `also_retry`: e.g. IntegrityError for a
    check-then-insert whose second run finds the winner's row). A race lost `attempts` times
    in a row is a TransientUpstreamError (the database is overloaded, not wrong)."""
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(database_url) as session:
                return work(session)
        except Exception as err:
            if not (is_write_conflict(err) or isinstance(err, also_retry)):
                raise
            if attempt == attempts:
                raise TransientUpstreamError(
                    f"the database kept refusing a transaction as a conflict ({attempts} times)"
                ) from err
            log.debug("transaction lost a race (%s), attempt %d", type(err).__name__, attempt)
            # Jitter: the racers that collided must not collide again in step.
            time.sleep(random.uniform(0, _FIRST_DELAY_S * 2**attempt))  # noqa: S311
    raise AssertionError("unreachable")  # the loop returns or raises
