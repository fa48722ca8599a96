"""dispatch: every attempt is recorded; transient failures back off, permanent ones are dead."""

from __future__ import annotations

import asyncio
import random
from email import message_from_bytes, policy
from pathlib import Path

from agent.compose import ComposeContext
from agent.dispatch import Dispatcher, OutboxWorker, backoff
from agent.errors import PermanentDeliveryError, TransientDeliveryError
from agent.models import Severity
from agent.outbox import Outbox
from agent.settings import DeliverySettings
from agent.testing import FakeClock, RecordingSubmitter
from tests.unit.conftest import pending_decision

DELIVERY = DeliverySettings(retry_initial=5.0, retry_max=60.0)


def _store(outbox: Outbox, n: int) -> None:
    outbox.ingest([pending_decision(i, code=f"E{i}") for i in range(n)])


def _dispatcher(
    db: OutboxWorker,
    submitter: RecordingSubmitter,
    clock: FakeClock,
    delivery: DeliverySettings = DELIVERY,
    concurrency: int = 1,
) -> Dispatcher:
    return Dispatcher(
        db,
        submitter,
        ComposeContext("GW <gw@example.com>", "gw-1", "Brno", stale_after=delivery.max_age),
        delivery=delivery,
        envelope_sender="gw@example.com",
        message_id_domain="example.com",
        idle_close=30.0,
        clock=clock,
        rng=random.Random(1),
        concurrency=concurrency,
    )


def _run(
    tmp_path: Path,
    submitter: RecordingSubmitter,
    clock: FakeClock,
    passes: int,
    n: int = 2,
    delivery: DeliverySettings = DELIVERY,
) -> Outbox:
    path = tmp_path / "outbox.db"
    writer = Outbox(path)
    _store(writer, n)

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, submitter, clock, delivery)
        stopping = asyncio.Event()
        for _ in range(passes):
            await dispatcher.pass_once(stopping)
            clock.advance(10.0)
        db.shutdown()

    asyncio.run(go())
    return writer


def test_all_due_mails_are_sent_and_recorded(tmp_path: Path) -> None:
    """Each pending alert becomes one mail, submitted once, recorded as sent with an audit row."""
    sub = RecordingSubmitter()
    outbox = _run(tmp_path, sub, FakeClock(), passes=1)
    assert len(sub.sent) == 2
    rows = list(outbox.alerts())
    assert [r["state"] for r in rows] == ["sent", "sent"]
    sent_ids = {message_from_bytes(m, policy=policy.SMTP)["Message-ID"] for _, _, m in sub.sent}
    assert sent_ids == {r["message_id"] for r in rows}
    assert [a["outcome"] for a in outbox.audit_log()] == ["sent", "sent"]


def test_relay_down_pauses_queue_then_delivers(tmp_path: Path) -> None:
    """A connection failure pauses the whole queue (no hammering) and all goes out later."""
    sub = RecordingSubmitter(
        failures=[
            TransientDeliveryError("connect", "refused", kind="connect"),
            TransientDeliveryError("connect", "refused", kind="connect"),
        ]
    )
    outbox = _run(tmp_path, sub, FakeClock(), passes=6)
    assert len(sub.sent) == 2
    outcomes = [a["outcome"] for a in outbox.audit_log()]
    assert outcomes == ["retry:connect", "retry:connect", "sent", "sent"]
    assert all(r["state"] == "sent" for r in outbox.alerts())


def test_4xx_on_one_mail_does_not_block_others(tmp_path: Path) -> None:
    """A 451 for one mail retries that mail later while the next mail goes out now."""
    sub = RecordingSubmitter(failures=[TransientDeliveryError("data", "try later", code=451)])
    outbox = _run(tmp_path, sub, FakeClock(), passes=1)
    assert [r["state"] for r in outbox.alerts()] == ["pending", "sent"]
    mail = outbox._conn.execute("SELECT attempts, last_reply FROM mails WHERE id = 1").fetchone()
    assert mail["attempts"] == 1 and "451" in mail["last_reply"]


def test_permanent_failure_marks_dead_with_reply(tmp_path: Path) -> None:
    """A 5xx for the whole mail makes it dead with the relay's reply; it is not retried."""
    sub = RecordingSubmitter(failures=[PermanentDeliveryError("data", "5.7.1 rejected", code=554)])
    outbox = _run(tmp_path, sub, FakeClock(), passes=3)
    rows = list(outbox.alerts())
    assert rows[0]["state"] == "dead" and "554" in rows[0]["reason"]
    assert len(sub.sent) == 1


def test_backoff_grows_is_capped_and_jittered() -> None:
    """Retry delays double from retry_initial, never exceed retry_max, and vary by ±20 %."""
    rng = random.Random(7)
    delays = [backoff(n, DELIVERY, rng) for n in range(1, 10)]
    assert 4.0 <= delays[0] <= 6.0
    assert 8.0 <= delays[1] <= 12.0
    assert max(delays) <= 60.0 and delays[-1] >= 48.0
    assert len({round(d, 6) for d in delays[-3:]}) == 3


def test_probe_ends_the_relay_pause_early(tmp_path: Path) -> None:
    """After a connect failure the queue pauses; a successful TCP probe resumes it at once."""
    path = tmp_path / "outbox.db"
    writer = Outbox(path)
    _store(writer, 1)
    sub = RecordingSubmitter(
        failures=[TransientDeliveryError("connect", "refused", kind="connect")]
    )
    clock = FakeClock()

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, clock)
        stopping = asyncio.Event()
        await dispatcher.pass_once(stopping)
        assert dispatcher.relay_paused and not sub.sent
        await dispatcher.pass_once(stopping)  # still paused: no attempt, clock unchanged
        assert not sub.sent
        await dispatcher.probe_relay()
        assert not dispatcher.relay_paused
        await dispatcher.pass_once(stopping)
        db.shutdown()

    asyncio.run(go())
    assert len(sub.sent) == 1 and sub.probes == 1
    assert next(writer.alerts())["state"] == "sent"


def test_expired_alerts_become_dead_when_configured(tmp_path: Path) -> None:
    """With expire = true, an alert older than max_age is dead with reason expired, not sent."""
    clock = FakeClock(start=1.0 + 7200.0)
    delivery = DeliverySettings(retry_initial=5.0, retry_max=60.0, max_age=3600.0, expire=True)
    sub = RecordingSubmitter()
    outbox = _run(tmp_path, sub, clock, passes=1, n=1, delivery=delivery)
    (alert,) = outbox.alerts()
    assert alert["state"] == "dead" and alert["reason"].startswith("expired: waited 2h")
    assert sub.sent == []


def test_stale_alerts_still_go_out_by_default(tmp_path: Path) -> None:
    """Without expire, an old alert goes out marked [STALE], saying how late it is."""
    clock = FakeClock(start=1.0 + 7200.0)
    delivery = DeliverySettings(retry_initial=5.0, retry_max=60.0, max_age=3600.0)
    sub = RecordingSubmitter()
    _run(tmp_path, sub, clock, passes=1, n=1, delivery=delivery)
    msg = message_from_bytes(sub.sent[0][2], policy=policy.default)
    assert str(msg["Subject"]).startswith("[STALE] ")
    assert "waited 2h 0m" in msg.get_body().get_content()


def _queued(tmp_path: Path, n: int) -> tuple[Path, Outbox]:
    """An outbox file holding n pending alerts, and the writer that stored them."""
    path = tmp_path / "outbox.db"
    writer = Outbox(path)
    _store(writer, n)
    return path, writer


def _subjects(sub: RecordingSubmitter) -> list[str]:
    return [str(message_from_bytes(m, policy=policy.SMTP)["Subject"]) for _, _, m in sub.sent]


def test_two_lanes_keep_two_mails_in_flight(tmp_path: Path) -> None:
    """With concurrency 2, two submissions overlap; every mail is still sent exactly once."""
    path, writer = _queued(tmp_path, 7)
    sub = RecordingSubmitter(delay=0.02)

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=2)
        assert await dispatcher.pass_once(asyncio.Event())
        db.shutdown()

    asyncio.run(go())
    assert sub.max_in_flight == 2
    assert sorted(_subjects(sub)) == sorted(set(_subjects(sub))) and len(sub.sent) == 7
    assert [r["state"] for r in writer.alerts()] == ["sent"] * 7


def test_critical_alert_preempts_the_claimed_batch(tmp_path: Path) -> None:
    """A critical alert stored while a batch of lesser mails is going out is sent next, not
    after the rest of the batch."""
    path, writer = _queued(tmp_path, 10)
    sub = RecordingSubmitter(delay=0.05)

    async def go() -> int:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=1)
        stopping = asyncio.Event()
        first = asyncio.create_task(dispatcher.pass_once(stopping))
        while not sub.in_flight:
            await asyncio.sleep(0.005)
        writer.ingest([pending_decision(100, uid="pump-9", code="C1", severity=Severity.CRITICAL)])
        dispatcher.wake(urgent=True)
        assert await first
        in_first_pass = len(sub.sent)
        await dispatcher.pass_once(stopping)
        db.shutdown()
        return in_first_pass

    in_first_pass = asyncio.run(go())
    assert in_first_pass == 1
    subjects = _subjects(sub)
    assert "[CRITICAL] pump-9 C1" in subjects[1], subjects
    assert len(sub.sent) == 11
