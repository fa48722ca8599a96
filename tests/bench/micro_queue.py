"""Micro benchmark: the outbox's per-mail CPU in the delivery loop, without SMTP (issue 18).

    .venv/bin/python -m tests.bench.micro_queue [alerts] [--stream] [--runs=N]

Ingests `alerts` alerts from 30 devices (one mail per alert: repeat_window 0, no digests, as
the throughput bench), then runs the loop's outbox side as Dispatcher.pass_once does:
clamp_due, plan_mails, claim_due(batch 50), and per mail one bound send_attempt JSON log line
and mark_sent. Backlog (default): all alerts stored before the first pass, as in a burst that
outran delivery. --stream: 50 alerts arrive before each pass. Prints CPU ms per mail per step,
the least of N runs (default 5) for each: other processes on a small machine only add time.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from agent.logs import configure_logging
from agent.models import Decision, Severity
from agent.outbox import AuditEntry, Outbox
from agent.planner import GroupingRules, plan_mails
from tests.unit.conftest import pending_decision

BATCH = 50
RULES = GroupingRules(repeat_window=0.0, digest_threshold=10_000_000, device_budget=0)


def _decisions(first: int, count: int, at: float) -> list[Decision]:
    return [
        pending_decision(
            seq, uid=f"pump-{seq % 30:03d}", code=f"E{seq % 4}", severity=Severity.ERROR, at=at
        )
        for seq in range(first, first + count)
    ]


class _Meter:
    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.cpu[step] = self.cpu.get(step, 0.0) + time.process_time() - start


def run(total: int, stream: bool) -> _Meter:
    """One run: the CPU seconds of each step over `total` mails."""
    out = io.StringIO()
    configure_logging(fmt="json", secrets=["relay-password"], stream=out)
    log = structlog.get_logger("faultmail.dispatch")
    meter = _Meter()
    sent = 0
    with tempfile.TemporaryDirectory(prefix="micro-queue-") as tmp:
        outbox = Outbox(Path(tmp) / "outbox.db")
        now = 1_800_000_000.0
        if not stream:
            for first in range(1, total + 1, 500):
                outbox.ingest(_decisions(first, min(500, total + 1 - first), now))
        next_seq = 1
        while sent < total:
            now += 0.01
            if stream and next_seq <= total:
                outbox.ingest(_decisions(next_seq, min(BATCH, total + 1 - next_seq), now))
                next_seq += BATCH
            with meter("clamp_due"):
                outbox.clamp_due(now, 3600.0, 0.0)
            with meter("plan_mails"):
                plan_mails(outbox, now, "example.com", "gw", RULES)
            with meter("claim_due"):
                mails = outbox.claim_due(now, BATCH)
            assert mails, "nothing due"
            for mail in mails:
                with meter("log"):
                    # As Attempt.deliver and _record_sent log a sent attempt.
                    bound = log.bind(
                        mail_id=mail.id,
                        message_id=mail.message_id,
                        alert_ids=[a.id for a in mail.alerts],
                        relay="relay.example.com:587",
                        attempt=mail.attempts + 1,
                    )
                    bound.info(
                        "send_attempt",
                        outcome="sent",
                        smtp_code=250,
                        duration_ms=3.2,
                        reply="2.0.0 Ok: queued as 4F1A2B3C",
                        refused=[],
                        retry_recipients=[],
                    )
                entry = AuditEntry(
                    "send_attempt",
                    "sent",
                    mail.id,
                    [a.id for a in mail.alerts],
                    relay="relay.example.com:587",
                    smtp_code=250,
                    detail="250 2.0.0 Ok",
                    duration_ms=3.2,
                )
                with meter("mark_sent"):
                    outbox.mark_sent(mail, now, entry)
                sent += 1
        outbox.close()
    assert out.getvalue().count("\n") == sent
    return meter


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    total = int(args[0]) if args else 2000
    stream = "--stream" in sys.argv
    runs = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--runs=")), 5)
    best: dict[str, float] = {}
    for _ in range(runs):
        meter = run(total, stream)
        steps = {**meter.cpu, "total": sum(meter.cpu.values())}
        best = {k: min(v, best.get(k, v)) for k, v in steps.items()}
    mode = "stream of 50 per pass" if stream else "backlog"
    print(f"{total} mails ({mode}), CPU ms per mail, least of {runs} runs:")
    for step, seconds in best.items():
        print(f"  {step:<11} {1000 * seconds / total:7.3f}")


if __name__ == "__main__":
    main()
