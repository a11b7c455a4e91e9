"""Racing callers: N threads released at one instant, for the tests of what may be done once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def race[T](racers: int, attempt: Callable[[int], T]) -> list[T]:
    """Run `attempt(i)` in `racers` threads that start together; their answers, in order.
    Any exception a racer raised is raised here (a race must never end in an error)."""
    start = threading.Barrier(racers)
    answers: list[T | None] = [None] * racers
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            answers[i] = attempt(i)
        except BaseException as err:  # handed to the test below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return answers  # type: ignore[return-value]  # every racer answered
