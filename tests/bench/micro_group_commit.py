"""Micro benchmark: group commit of delivery outcomes (issue 18).

    .venv/bin/python -m tests.bench.micro_group_commit [mails] [--lanes=N] [--delay=S] [--runs=N]

Stores `mails` one-alert mails, then runs the real Dispatcher (compose, fake relay that takes
`delay` seconds per submission, `lanes` connections) until all are sent, twice: "single" with
every outcome in its own transaction (as before: OutboxWorker.outcome = a plain call) and
"grouped" (OutboxWorker.outcome). Prints wall ms and process CPU ms per mail and the commits
(fsyncs) the outcomes took, the least of N runs: other processes only add time.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog

from agent.compose import ComposeContext
from agent.dispatch import DispatchConfig, Dispatcher, OutboxWorker
from agent.outbox import Outbox
from agent.planner import GroupingRules
from agent.settings import DeliverySettings
from tests.fakes import FakeClock, RecordingSubmitter
from tests.unit.conftest import pending_decision

T = TypeVar("T")
RULES = GroupingRules(repeat_window=0.0, digest_threshold=10_000_000, device_budget=0)


class SingleWorker(OutboxWorker):
    """The worker before group commit: one transaction per outcome."""

    async def outcome(self, fn: Callable[[Outbox], T]) -> T:
        self.groups += 1
        self.grouped_writes += 1
        return await self(fn)


def _run(kind: type[OutboxWorker], mails: int, lanes: int, delay: float) -> tuple[float, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.db"
        writer = Outbox(path)
        writer.ingest(
            [pending_decision(i, uid=f"pump-{i % 30}", code=f"E{i}") for i in range(mails)]
        )
        writer.close()
        clock = FakeClock()
        sub = RecordingSubmitter(delay=delay)
        config = DispatchConfig(
            delivery=DeliverySettings(retry_initial=5.0, retry_max=60.0),
            compose=ComposeContext("GW <gw@example.com>", "gw-1", "Brno", stale_after=1e9),
            envelope_sender="gw@example.com",
            message_id_domain="example.com",
            idle_close=30.0,
            concurrency=lanes,
            grouping=RULES,
        )
        db = kind(Outbox(path))

        async def go() -> None:
            dispatcher = Dispatcher(db, sub, config, clock=clock, mono=clock, rng=random.Random(1))
            stopping = asyncio.Event()
            while len(sub.sent) < mails:
                await dispatcher.pass_once(stopping)
                clock.advance(1.0)

        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(go())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        db.shutdown()
        return wall * 1000 / mails, cpu * 1000 / mails, db.groups, db.grouped_writes


def main(argv: list[str]) -> None:
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))
    args = [a for a in argv if not a.startswith("--")]
    mails = int(args[0]) if args else 1000
    lanes, delay, runs = (
        int(opts.get("lanes", 2)),
        float(opts.get("delay", 0.0)),
        int(opts.get("runs", 3)),
    )
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    print(f"{mails} mails, {lanes} lanes, relay delay {delay * 1000:.1f} ms, least of {runs}")
    for name, kind in (("single", SingleWorker), ("grouped", OutboxWorker)):
        results = [_run(kind, mails, lanes, delay) for _ in range(runs)]
        wall = min(r[0] for r in results)
        cpu = min(r[1] for r in results)
        groups, writes = results[-1][2], results[-1][3]
        print(
            f"{name:8} wall {wall:6.3f} ms/mail  cpu {cpu:6.3f} ms/mail  "
            f"outcome commits {groups} for {writes} outcomes"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
