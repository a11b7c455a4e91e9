"""A clinician's alert stream (`GET /api/alerts`, server-sent events) read in a thread."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx


class Listener:
    """One alert stream read in a thread: its events, and whether the server ended it."""

    def __init__(self, base: str, access: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self.opened = threading.Event()
        self._client = httpx.Client(base_url=base, timeout=httpx.Timeout(30, read=30))
        self._thread = threading.Thread(target=self._read, args=(access,), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the alert stream did not open"

    def _read(self, access: str) -> None:
        headers = {"Authorization": f"Bearer {access}", "Accept": "text/event-stream"}
        try:
            with self._client.stream("GET", "/api/alerts", headers=headers) as response:
                self.status = response.status_code
                self.opened.set()
                kind = "message"
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        kind = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        self.events.append((kind, json.loads(line.removeprefix("data:"))))
                        kind = "message"
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def wait_for(self, kind: str, timeout_s: float = 10) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for seen, data in self.events:
                if seen == kind:
                    return data
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self._client.close()
