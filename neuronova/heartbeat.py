"""The arrival watcher's heartbeat: a file it rewrites after every pass with what kept that pass
from handing studies on (`{"problem": null}` when nothing did). Read by the local stack's status
and, as compose's health check, by `python -m neuronova.heartbeat FILE MAX_AGE_S` (exit 0:
healthy). Standard library only: a probe that runs every 30 s must cost next to nothing.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HeartbeatHealth:
    """`alive`: a pass finished within the limit; `problem`: what kept the last pass from
    handing studies on (a missing deployment, Prefect or Orthanc not answering), else None."""

    alive: bool
    problem: str | None


def read_heartbeat(path: Path, max_age_s: float) -> HeartbeatHealth:
    if not path.exists():
        return HeartbeatHealth(False, "no pass finished yet")
    age = time.time() - path.stat().st_mtime
    if age > max_age_s:
        return HeartbeatHealth(False, f"last pass {age:.0f} s ago (more than {max_age_s:.0f} s)")
    try:
        problem = json.loads(path.read_text() or "{}").get("problem")
    except (OSError, ValueError, AttributeError):
        problem = None  # a beat being replaced, or an older watcher's empty file
    return HeartbeatHealth(True, str(problem) if problem else None)


def heartbeat_limit_s(poll_s: float) -> float:
    """How old the last pass may be before the watcher counts as stuck."""
    return 3 * poll_s + 30


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m neuronova.heartbeat FILE MAX_AGE_S", file=sys.stderr)
        return 2
    state = read_heartbeat(Path(argv[0]), float(argv[1]))
    if not state.alive or state.problem:
        print(f"arrival watcher {'stuck' if not state.alive else 'degraded'}: {state.problem}")
        return 1
    print("arrival watcher hands studies on")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
