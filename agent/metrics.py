"""In-process counters every stage adds to, and the relay gauges delivery sets.

A leaf module on purpose: intake and dispatch count here without importing health (which reads
the outbox), so data never flows back up the pipeline. Health renders these figures.
"""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    """Counters since this process started (Prometheus handles the reset at a restart)."""

    def __init__(self) -> None:
        # add() is called from the intake thread and from the event loop alike.
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self.relay_up = True
        self.last_success: float | None = None
        # The relay's refusal of our login while the alarm lasts (agent.dispatch.gate).
        self.auth_failing: str | None = None

    def add(self, name: str, label: str = "", n: int = 1) -> None:
        with self._lock:
            self._counts[(name, label)] += n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)
