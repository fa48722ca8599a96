"""Fakes for our unit tests: a controllable clock and a recording submitter.

They live with the tests, not in `agent/`, so that the package a gateway installs cannot import
them. Integration tests never use these; they run a real relay and broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.errors import DeliveryError
from agent.submit import SubmitResult


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingSubmitter:
    """Records what would have been sent; `failures` are raised, in order, before succeeding."""

    relay: str = "fake:587"
    failures: list[DeliveryError] = field(default_factory=list)
    sent: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)
    closed: int = 0

    # Seconds each submission takes (a relay's round trips), and the most seen in flight.
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> SubmitResult:
        if self.failures:
            raise self.failures.pop(0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.sent.append((sender, tuple(recipients), message))
        return SubmitResult(code=250, reply="2.0.0 queued")

    reachable: bool = True
    probes: int = 0

    async def close(self) -> None:
        self.closed += 1

    async def probe(self) -> bool:
        self.probes += 1
        return self.reachable
