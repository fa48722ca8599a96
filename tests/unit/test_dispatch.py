"""dispatch: every attempt is recorded; transient failures back off, permanent ones are dead."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from agent import planner
from agent.compose import ComposeContext
from agent.dispatch import (
    MAX_INTERNAL_ERRORS,
    DispatchConfig,
    Dispatcher,
    OutboxWorker,
    backoff,
    worker,
)
from agent.errors import OutboxCorrupt, PermanentDeliveryError, TransientDeliveryError
from agent.liveness import Stage
from agent.models import Decision, Mail, Severity
from agent.outbox import AuditEntry, Outbox
from agent.planner import GroupingRules, plan_mails
from agent.settings import DeliverySettings
from agent.submit import SubmitResult
from tests.fakes import FakeClock, RecordingSubmitter
from tests.unit.conftest import pending_decision

DELIVERY = DeliverySettings(retry_initial=5.0, retry_max=60.0)


def _store(outbox: Outbox, n: int) -> None:
    outbox.ingest([pending_decision(i, code=f"E{i}") for i in range(n)])


def _dispatcher(
    db: OutboxWorker,
    submitter: RecordingSubmitter,
    clock: Callable[[], float],
    delivery: DeliverySettings = DELIVERY,
    concurrency: int = 1,
    *,
    ctx: ComposeContext | None = None,
    mono: Callable[[], float] | None = None,
    stage: Stage | None = None,
    grouping: GroupingRules | None = None,
) -> Dispatcher:
    """A dispatcher on the fake clock (wall and monotonic, unless `mono` is given apart)."""
    config = DispatchConfig(
        delivery=delivery,
        compose=ctx
        or ComposeContext("GW <gw@example.com>", "gw-1", "Brno", stale_after=delivery.max_age),
        envelope_sender="gw@example.com",
        message_id_domain="example.com",
        idle_close=30.0,
        concurrency=concurrency,
        grouping=grouping or GroupingRules(),
    )
    return Dispatcher(
        db,
        submitter,
        config,
        clock=clock,
        mono=mono or clock,
        rng=random.Random(1),
        stage=stage,
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
    body = msg.get_body()
    assert body is not None
    assert "waited 2h 0m" in body.get_content()


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


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_pass_takes_batch_size_mails_per_connection(tmp_path: Path, lanes: int) -> None:
    """delivery.batch_size is per connection: one pass claims and sends that many per lane,
    and the rest wait for the next pass."""
    path, writer = _queued(tmp_path, 20)
    sub = RecordingSubmitter()
    delivery = DELIVERY.model_copy(update={"batch_size": 3})

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), delivery, concurrency=lanes)
        assert await dispatcher.pass_once(asyncio.Event())
        assert len(sub.sent) == 3 * lanes
        assert await dispatcher.pass_once(asyncio.Event())
        db.shutdown()

    asyncio.run(go())
    assert len(sub.sent) == 6 * lanes
    assert sorted(r["state"] for r in writer.alerts()).count("sent") == 6 * lanes


class _OneStalls(RecordingSubmitter):
    """The relay keeps the first mail's reply back until `release` is set."""

    def __init__(self) -> None:
        super().__init__(delay=0.005)
        self.release = asyncio.Event()
        self.stalled = 0

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> SubmitResult:
        if not self.stalled:
            self.stalled += 1
            await self.release.wait()
        return await super().submit(sender, recipients, message)


def test_a_stalled_reply_does_not_hold_the_other_lanes_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two lanes; the relay keeps one mail's reply back. The other lane's five mails are sent
    and committed meanwhile: an outcome waits for the other lane's only briefly
    (worker.COMPANY_WAIT_S), never for a reply that does not come."""
    # The pass keeps waiting for the stalled lane here (on a slow machine the default could
    # leave it behind before the check below): this is about outcomes, see lanes for that.
    monkeypatch.setattr("agent.dispatch.lanes.STRAGGLER_S", 60.0)
    path, writer = _queued(tmp_path, 6)
    sub = _OneStalls()

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=2)
        run = asyncio.ensure_future(dispatcher.pass_once(asyncio.Event()))
        for _ in range(500):
            states = [r["state"] for r in writer.alerts()]
            if states.count("sent") == 5:
                break
            await asyncio.sleep(0.01)
        assert states.count("sent") == 5 and states.count("pending") == 1, states
        assert not run.done()
        sub.release.set()
        assert await asyncio.wait_for(run, 5)
        db.shutdown()

    asyncio.run(go())
    assert [r["state"] for r in writer.alerts()] == ["sent"] * 6


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_stalled_reply_does_not_hold_the_next_pass(tmp_path: Path, lanes: int) -> None:
    """The relay keeps one mail's reply back. The pass goes on without that lane once it
    hands out nothing more; the next passes send new mails on the other lanes (none with a
    single connection) and never claim the mail in flight; when its reply comes it is
    recorded once and the loop is woken to use the connection again."""
    path, writer = _queued(tmp_path, 1)
    sub = _OneStalls()

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=lanes)
        woken: list[bool] = []
        dispatcher._lanes._wake = lambda: woken.append(True)
        stopping = asyncio.Event()
        assert await asyncio.wait_for(dispatcher.pass_once(stopping), 5)
        assert sub.stalled == 1 and not sub.sent
        writer.ingest([pending_decision(i, code=f"N{i}") for i in range(10, 13)])
        # The expedite after a relay probe makes every pending mail due now, this one too.
        await db(lambda o: o.expedite(1e12))
        await dispatcher.pass_once(stopping)
        assert len(sub.sent) == (3 if lanes == 2 else 0), _subjects(sub)
        assert sub.stalled == 1
        sub.release.set()
        for _ in range(500):
            if woken:
                break
            await asyncio.sleep(0.01)
        assert woken
        while await dispatcher.pass_once(stopping):
            pass
        db.shutdown()

    asyncio.run(go())
    assert len(sub.sent) == 4 and len(set(_subjects(sub))) == 4
    assert [r["state"] for r in writer.alerts()] == ["sent"] * 4
    assert [a["outcome"] for a in writer.audit_log()].count("sent") == 4


def test_a_lane_left_behind_that_never_finishes_fails_the_stage(tmp_path: Path) -> None:
    """A lane left behind no longer holds the loop, whose heartbeat goes on; one still busy
    after the stage's stall limit (which covers every SMTP timeout) fails the delivery stage,
    so the supervisor restarts the daemon instead of health saying OK with a connection lost
    for good."""
    path, _ = _queued(tmp_path, 1)
    sub = _OneStalls()  # never released
    stage = Stage("dispatch", stall_after=0.3)

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=2, stage=stage)
        assert await asyncio.wait_for(dispatcher.pass_once(asyncio.Event()), 5)
        assert stage.error is None
        for _ in range(300):
            if stage.error is not None:
                break
            await asyncio.sleep(0.01)
        sub.release.set()
        db.shutdown()

    asyncio.run(go())
    assert isinstance(stage.error, RuntimeError)
    assert "busy with one mail" in str(stage.error)


class _Alternating(RecordingSubmitter):
    """Every other submission takes 50 ms longer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> SubmitResult:
        self.calls += 1
        await asyncio.sleep(0.06 if self.calls % 2 == 0 else 0.01)
        return await super().submit(sender, recipients, message)


def test_two_lanes_share_their_outcome_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two lanes whose replies come 50 ms apart, longer than a commit takes, still commit
    their outcomes in pairs: the first waits for the second (the wait is made long here)."""
    monkeypatch.setattr(worker, "COMPANY_WAIT_S", 1.0)
    path, writer = _queued(tmp_path, 8)
    sub = _Alternating()

    async def go() -> OutboxWorker:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=2)
        assert await dispatcher.pass_once(asyncio.Event())
        db.shutdown()
        return db

    db = asyncio.run(go())
    assert db.grouped_writes == 8 and db.groups == 4, (db.groups, db.grouped_writes)
    assert [r["state"] for r in writer.alerts()] == ["sent"] * 8


async def _urgent_during_a_pass(
    path: Path, writer: Outbox, sub: RecordingSubmitter, arriving: list[Decision]
) -> tuple[Dispatcher, OutboxWorker, asyncio.Event]:
    """A dispatcher whose pass was under way (a submission in flight) when `arriving` was
    stored and a critical alert woke it; returned once that pass has ended."""
    db = OutboxWorker(Outbox(path))
    dispatcher = _dispatcher(db, sub, FakeClock(), concurrency=1)
    stopping = asyncio.Event()
    first = asyncio.create_task(dispatcher.pass_once(stopping))
    while not sub.in_flight:
        await asyncio.sleep(0.005)
    writer.ingest(arriving)
    dispatcher.wake(urgent=True)
    assert await first
    return dispatcher, db, stopping


def test_critical_alert_preempts_the_claimed_batch(tmp_path: Path) -> None:
    """A critical alert stored while a batch of lesser mails is going out is sent next, not
    after the rest of the batch: the pass it wakes claims the critical mails alone (without
    numbering the whole backlog), and the pass after it takes the rest."""
    path, writer = _queued(tmp_path, 10)
    sub = RecordingSubmitter(delay=0.05)

    async def go() -> list[int]:
        critical = pending_decision(100, uid="pump-9", code="C1", severity=Severity.CRITICAL)
        dispatcher, db, stopping = await _urgent_during_a_pass(path, writer, sub, [critical])
        sent = [len(sub.sent)]
        for _ in range(2):
            assert await dispatcher.pass_once(stopping)
            sent.append(len(sub.sent))
        db.shutdown()
        return sent

    assert asyncio.run(go()) == [1, 2, 11]
    subjects = _subjects(sub)
    assert "[CRITICAL] pump-9 C1" in subjects[1], subjects


def test_a_critical_alerts_pass_plans_its_device_alone(tmp_path: Path) -> None:
    """In a storm, the pass a critical alert wakes does not first plan every alert that arrived
    since the last pass: it plans the critical alert's device, sends the critical mail, and
    the pass straight after plans and sends the others."""
    path, writer = _queued(tmp_path, 3)
    sub = RecordingSubmitter(delay=0.05)

    async def go() -> list[tuple[int, int]]:
        storm = [pending_decision(100 + i, uid=f"storm-{i % 4}") for i in range(40)]
        critical = pending_decision(200, uid="pump-9", code="C1", severity=Severity.CRITICAL)
        dispatcher, db, stopping = await _urgent_during_a_pass(
            path, writer, sub, [*storm, critical]
        )
        seen = [(len(sub.sent), writer.unplanned_critical()[0])]
        for _ in range(2):
            assert await dispatcher.pass_once(stopping)
            seen.append((len(sub.sent), writer.unplanned_critical()[0]))
        db.shutdown()
        return seen

    assert asyncio.run(go()) == [(1, 41), (2, 40), (44, 0)]
    assert "[CRITICAL] pump-9 C1" in _subjects(sub)[1]


def test_after_a_critical_alerts_pass_the_others_go_out_without_waiting_for_a_poll(
    tmp_path: Path,
) -> None:
    """The critical alert that woke the pass made no mail (a repeat its thread holds): the
    other devices' alerts it left unplanned still go out at once, not at the next poll an
    hour later."""
    path, writer = _queued(tmp_path, 0)
    writer.ingest([pending_decision(1, uid="pump-9", code="C1", severity=Severity.CRITICAL)])
    sub = RecordingSubmitter()
    delivery = DeliverySettings(retry_initial=5.0, retry_max=60.0, poll_interval=3600.0)
    grouping = GroupingRules(repeat_window=600.0)

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock(), delivery, grouping=grouping)
        stopping = asyncio.Event()
        assert await dispatcher.pass_once(stopping)
        writer.ingest([pending_decision(2, uid="pump-9", code="C1", severity=Severity.CRITICAL)])
        writer.ingest([pending_decision(10 + i, uid=f"well-{i}") for i in range(3)])
        dispatcher.wake(urgent=True)
        task = asyncio.create_task(dispatcher.run(stopping))
        try:
            for _ in range(500):
                if len(sub.sent) == 4:
                    break
                await asyncio.sleep(0.01)
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=10)
            db.shutdown()

    asyncio.run(go())
    assert len(sub.sent) == 4, _subjects(sub)
    # The repeat waits for its thread's window, as it would have in any pass.
    assert writer.unplanned_critical() == (1, frozenset({"pump-9"}))


class _CriticalStream(RecordingSubmitter):
    """Each submission sees a new critical alert stored and the dispatcher woken for it."""

    def __init__(self, writer: Outbox) -> None:
        super().__init__()
        self.writer = writer
        self.dispatcher: Dispatcher | None = None
        self.seq = 1000

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> SubmitResult:
        self.seq += 1
        uid = f"pump-{self.seq}"
        self.writer.ingest([pending_decision(self.seq, uid=uid, severity=Severity.CRITICAL)])
        assert self.dispatcher is not None
        self.dispatcher.wake(urgent=True)
        return await super().submit(sender, recipients, message)


def test_a_stream_of_critical_alerts_does_not_keep_other_devices_waiting(
    tmp_path: Path,
) -> None:
    """A critical alert before every pass and during every submission (many devices, or
    repeats a thread holds) makes every pass urgent. Each planned critical-first, and each
    pre-empted before its first lesser mail, another device's error would never go out while
    the loop beats as if all were well: at most every other pass plans and claims the
    critical devices alone, and every pass hands out at least one lesser mail it claimed."""
    path, writer = _queued(tmp_path, 0)
    writer.ingest([pending_decision(1, uid="well-1", code="E1")])
    writer.ingest([pending_decision(2, uid="pump-1", severity=Severity.CRITICAL)])
    sub = _CriticalStream(writer)

    async def go() -> list[str]:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock())
        sub.dispatcher = dispatcher
        stopping = asyncio.Event()
        dispatcher.wake(urgent=True)
        for _ in range(4):
            await dispatcher.pass_once(stopping)
        db.shutdown()
        return _subjects(sub)

    subjects = asyncio.run(go())
    assert any("well-1 E1" in s for s in subjects), subjects


def test_a_wake_for_a_critical_alert_with_none_due_still_delivers_the_rest(
    tmp_path: Path,
) -> None:
    """Woken as urgent with no critical mail due (it was grouped, silenced, or is already out),
    the pass claims as usual instead of finding nothing and going idle."""
    path, _ = _queued(tmp_path, 4)
    sub = RecordingSubmitter()

    async def go() -> bool:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock())
        dispatcher.wake(urgent=True)
        attempted = await dispatcher.pass_once(asyncio.Event())
        db.shutdown()
        return attempted

    assert asyncio.run(go())
    assert len(sub.sent) == 4


# ---- one mail is the unit of work (issue #12) ------------------------------------------------


def test_a_device_whose_planning_raises_is_given_up_and_the_others_go_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in planning that one device's alerts run into (here: decide raises whenever the
    backlog holds an alert of "bad") ends neither the pass nor the stage. That device's
    waiting alerts become dead with the error as their reason, audited; the other devices'
    alerts are sent, in this pass and the next."""
    path = tmp_path / "outbox.db"
    writer = Outbox(path)
    writer.ingest(
        [
            pending_decision(1, uid="good-1", code="E1"),
            pending_decision(2, uid="bad", code="E2"),
            pending_decision(3, uid="good-2", code="E3"),
        ]
    )
    real_decide = planner.decide

    def decide(backlog: Any, *args: Any, **kwargs: Any) -> Any:
        if any(a.uid == "bad" for a in backlog.alerts):
            raise ZeroDivisionError("a bug that this device's alerts run into")
        return real_decide(backlog, *args, **kwargs)

    monkeypatch.setattr(planner, "decide", decide)
    sub = RecordingSubmitter()

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, FakeClock())
        assert await dispatcher.pass_once(asyncio.Event())
        writer.ingest([pending_decision(4, uid="good-1", code="E4")])
        assert await dispatcher.pass_once(asyncio.Event())
        db.shutdown()

    asyncio.run(go())
    states = {(r["uid"], r["code"]): (r["state"], r["reason"]) for r in writer.alerts()}
    assert states[("bad", "E2")][0] == "dead"
    assert "ZeroDivisionError" in str(states[("bad", "E2")][1])
    assert {k: v[0] for k, v in states.items() if k[0] != "bad"} == {
        ("good-1", "E1"): "sent",
        ("good-2", "E3"): "sent",
        ("good-1", "E4"): "sent",
    }
    assert len(sub.sent) == 3
    given_up = [a for a in writer.audit_log() if a["event"] == "planned"]
    assert [(a["outcome"], len(a["alert_ids"])) for a in given_up] == [("dead", 1)]


class _RaisingSubmitter(RecordingSubmitter):
    """Raises `error` for mails whose bytes contain `poison`; sends the others."""

    def __init__(self, error: Exception, poison: bytes = b"") -> None:
        super().__init__()
        self.error = error
        self.poison = poison
        self.raised = 0

    async def submit(self, sender: str, recipients: Sequence[str], message: bytes) -> SubmitResult:
        if self.poison in message:
            self.raised += 1
            raise self.error
        return await super().submit(sender, recipients, message)


def _passes(
    path: Path,
    sub: RecordingSubmitter,
    clock: FakeClock,
    passes: int,
    *,
    ctx: ComposeContext | None = None,
    db: OutboxWorker | None = None,
    step: float = 100.0,
) -> None:
    """`passes` delivery passes, the clock (wall and monotonic) moving `step` s between them."""

    async def go() -> None:
        worker = db or OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(worker, sub, clock, ctx=ctx)
        stopping = asyncio.Event()
        for _ in range(passes):
            await dispatcher.pass_once(stopping)
            clock.advance(step)
        worker.shutdown()

    asyncio.run(go())


def test_a_submitter_exception_is_retried_then_dead_and_others_go_out(tmp_path: Path) -> None:
    """Any exception from submit is recorded against its mail (retry:internal with the type),
    other mails still go out, and after MAX_INTERNAL_ERRORS the mail is dead."""
    path, writer = _queued(tmp_path, 2)
    # Each alert's subject carries its code: E0 for the first mail, E1 for the second.
    sub = _RaisingSubmitter(ZeroDivisionError("boom"), poison=b"p E0: m")
    _passes(path, sub, FakeClock(), passes=MAX_INTERNAL_ERRORS + 2)
    assert sub.raised == MAX_INTERNAL_ERRORS
    assert len(sub.sent) == 1
    first, second = writer.alerts()
    assert first["state"] == "dead" and second["state"] == "sent"
    assert first["reason"].startswith("internal_error: ZeroDivisionError: boom")
    rows = [r for r in writer.audit_log() if r["mail_id"] == first["mail_id"]]
    assert [r["outcome"] for r in rows] == ["retry:internal"] * (MAX_INTERNAL_ERRORS - 1) + ["dead"]
    assert all("ZeroDivisionError" in r["detail"] for r in rows)


def test_a_compose_failure_is_recorded_and_the_loop_carries_on(tmp_path: Path) -> None:
    """A subject_format that fails at send time costs retries, then the mails are dead; the
    delivery pass itself never raises."""
    path, writer = _queued(tmp_path, 2)
    ctx = ComposeContext(
        "GW <gw@example.com>", "gw-1", "Brno", subject_format="{message:>99999999999999999999}"
    )
    sub = RecordingSubmitter()
    _passes(path, sub, FakeClock(), passes=MAX_INTERNAL_ERRORS + 1, ctx=ctx)
    assert sub.sent == []
    assert [a["state"] for a in writer.alerts()] == ["dead", "dead"]
    outcomes = [r["outcome"] for r in writer.audit_log()]
    assert outcomes.count("retry:internal") == 2 * (MAX_INTERNAL_ERRORS - 1)
    assert outcomes.count("dead") == 2


def test_internal_error_count_survives_a_restart(tmp_path: Path) -> None:
    """The internal-error count comes from the audit log: a new dispatcher (a restart) does
    not give a poisoned mail a fresh budget."""
    path, writer = _queued(tmp_path, 1)
    sub = _RaisingSubmitter(KeyError("x"))
    clock = FakeClock()
    for _ in range(MAX_INTERNAL_ERRORS):
        _passes(path, sub, clock, passes=1)
    assert sub.raised == MAX_INTERNAL_ERRORS
    (alert,) = writer.alerts()
    assert alert["state"] == "dead" and "internal_error: KeyError" in alert["reason"]


def test_a_lone_surrogate_in_the_250_reply_is_recorded_as_sent(tmp_path: Path) -> None:
    """A reply the relay sent with a stray byte (a lone surrogate after decoding) cannot stop
    the "sent" record: the mail is sent once and never again."""
    path, writer = _queued(tmp_path, 1)

    class Latin1Relay(RecordingSubmitter):
        async def submit(
            self, sender: str, recipients: Sequence[str], message: bytes
        ) -> SubmitResult:
            await super().submit(sender, recipients, message)
            return SubmitResult(code=250, reply="2.0.0 \udcfcbernommen")

    sub = Latin1Relay()
    _passes(path, sub, FakeClock(), passes=3)
    assert len(sub.sent) == 1
    (alert,) = writer.alerts()
    assert alert["state"] == "sent"
    (row,) = writer.audit_log()
    assert row["outcome"] == "sent" and row["detail"] == "250 2.0.0 \ufffdbernommen"


def test_an_unrecordable_sent_is_recorded_plainly_never_resent(tmp_path: Path) -> None:
    """When writing "sent" with the relay's reply fails with an error of ours, the mail is
    recorded as sent without the reply: the relay has it, so it is not submitted again."""
    path, writer = _queued(tmp_path, 1)
    box = Outbox(path)
    real = box.mark_sent
    calls = []

    def flaky(mail: Mail, now: float, audit: AuditEntry, **kw: Any) -> None:
        calls.append(audit.detail)
        if len(calls) == 1:
            raise TypeError("cannot bind this reply")
        real(mail, now, audit, **kw)

    box.mark_sent = flaky  # type: ignore[method-assign]
    sub = RecordingSubmitter()
    _passes(path, sub, FakeClock(), passes=3, db=OutboxWorker(box))
    assert len(sub.sent) == 1
    (alert,) = writer.alerts()
    assert alert["state"] == "sent"
    (row,) = writer.audit_log()
    assert row["detail"] == "250 (reply not recordable: TypeError)"


def test_outbox_corruption_ends_the_loop_and_fails_the_stage(tmp_path: Path) -> None:
    """OutboxCorrupt is not retried: it propagates out of run() and the stage is failed."""
    path, _ = _queued(tmp_path, 1)
    box = Outbox(path)

    def corrupt(now: float, limit: int, *, critical_only: bool = False) -> list[Mail]:
        raise OutboxCorrupt("reading the queue: database disk image is malformed")

    box.claim_due = corrupt  # type: ignore[method-assign]
    stage = Stage("dispatch")

    async def go() -> None:
        db = OutboxWorker(box)
        dispatcher = _dispatcher(db, RecordingSubmitter(), FakeClock(), stage=stage)
        try:
            await asyncio.wait_for(dispatcher.run(asyncio.Event()), timeout=10)
        finally:
            db.shutdown()

    with pytest.raises(OutboxCorrupt):
        asyncio.run(go())
    assert isinstance(stage.error, OutboxCorrupt)


def test_a_pending_mail_without_alerts_is_dead_with_a_reason(tmp_path: Path) -> None:
    """A pending mail whose alerts are gone (an older outbox, a hand edit) ends dead saying
    why, instead of failing in compose."""
    path, writer = _queued(tmp_path, 2)
    plan_mails(writer, 1.0, "example.com", "gw-1")
    writer._conn.execute("DELETE FROM alerts WHERE id = 1")
    sub = RecordingSubmitter()
    _passes(path, sub, FakeClock(), passes=1)
    assert len(sub.sent) == 1
    mail = writer._conn.execute("SELECT state, last_reply FROM mails WHERE id = 1").fetchone()
    assert mail["state"] == "dead" and mail["last_reply"].startswith("no_alerts:")


def test_pruning_keeps_the_alerts_of_a_mail_still_pending_for_a_recipient(
    tmp_path: Path,
) -> None:
    """452 for one of two recipients keeps the mail pending; housekeeping then prunes history
    and the retry still goes out, composed from the same alerts, to that recipient."""
    path = tmp_path / "outbox.db"
    writer = Outbox(path)
    two = dataclasses.replace(
        pending_decision(1, code="E1"), recipients=("ops@example.com", "late@example.com")
    )
    writer.ingest([two])

    class FullMailbox(RecordingSubmitter):
        async def submit(
            self, sender: str, recipients: Sequence[str], message: bytes
        ) -> SubmitResult:
            result = await super().submit(sender, recipients, message)
            if len(self.sent) == 1:
                return SubmitResult(250, "ok", {"late@example.com": (452, "4.2.2 full")})
            return result

    sub = FullMailbox()
    clock = FakeClock()
    _passes(path, sub, clock, passes=1)
    assert writer.prune_history(before=clock() + 10**6) == 0
    _passes(path, sub, clock, passes=1)
    assert [r for _, r, _ in sub.sent] == [
        ("ops@example.com", "late@example.com"),
        ("late@example.com",),
    ]
    assert _subjects(sub)[0] == _subjects(sub)[1]
    mail = writer._conn.execute("SELECT state FROM mails").fetchone()
    assert mail["state"] == "sent"


# ---- liveness and clocks -----------------------------------------------------------------


def test_wakes_during_a_relay_pause_neither_probe_nor_delay_a_stop(tmp_path: Path) -> None:
    """While the relay is down, new alerts (wakes) do not cut the loop's sleep short: the relay
    is probed every probe_interval, not once per wake; a stop request still ends it at once."""
    path, _ = _queued(tmp_path, 1)
    sub = RecordingSubmitter(
        failures=[TransientDeliveryError("connect", "refused", kind="connect")], reachable=False
    )
    interval = 0.2
    delivery = DeliverySettings(
        retry_initial=60.0, retry_max=300.0, probe_interval=interval, poll_interval=3600.0
    )
    timing: dict[str, float] = {}

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, time.time, delivery, mono=time.monotonic)
        stopping = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stopping))
        while not dispatcher.relay_paused:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            dispatcher.wake(urgent=True)
            await asyncio.sleep(0.005)
        timing["window"] = time.monotonic() - started
        stop_at = time.monotonic()
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
        timing["stop"] = time.monotonic() - stop_at
        db.shutdown()

    asyncio.run(go())
    assert sub.probes <= timing["window"] / interval + 2, (sub.probes, timing)
    assert sub.probes >= 3  # the pause is still probed on its own cadence
    assert timing["stop"] < 1.0 and not sub.sent


class _CountingStage(Stage):
    def __init__(self) -> None:
        super().__init__("dispatch")
        self.beats = 0
        self.was_stopped = False

    def beat(self) -> None:
        self.beats += 1
        super().beat()

    def stopped(self) -> None:
        self.was_stopped = True
        super().stopped()


def test_idle_loop_beats_while_sleeping_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle dispatcher still beats (every sleep is cut at HEARTBEAT_S) and reports
    stopped when run() returns."""
    monkeypatch.setattr("agent.dispatch.idle.HEARTBEAT_S", 0.01)
    path, _ = _queued(tmp_path, 0)
    stage = _CountingStage()
    delivery = DeliverySettings(retry_initial=5.0, retry_max=60.0, poll_interval=3600.0)

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, RecordingSubmitter(), FakeClock(), delivery, stage=stage)
        stopping = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stopping))
        while stage.beats < 5:
            await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
        db.shutdown()

    asyncio.run(go())
    assert stage.was_stopped and stage.error is None


def test_relay_pause_runs_on_the_monotonic_clock(tmp_path: Path) -> None:
    """The relay pause after a connect failure ends by monotonic time: stepping the wall
    clock back an hour neither lengthens it nor does stepping it forward end it."""
    path, writer = _queued(tmp_path, 1)
    sub = RecordingSubmitter(
        failures=[TransientDeliveryError("connect", "refused", kind="connect")]
    )
    wall, mono = FakeClock(), FakeClock(start=1000.0)  # the monotonic clock apart

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, wall, mono=mono)
        stopping = asyncio.Event()
        await dispatcher.pass_once(stopping)
        wall.advance(7200.0)
        assert dispatcher.relay_paused
        wall.advance(-10800.0)
        assert dispatcher.relay_paused
        mono.advance(10.0)  # longer than the first backoff (5 s ± 20 %)
        assert not dispatcher.relay_paused
        wall.advance(3600.0 + 10.0)  # the persisted due time is wall time: let it pass
        await dispatcher.pass_once(stopping)
        db.shutdown()

    asyncio.run(go())
    assert len(sub.sent) == 1
    assert next(writer.alerts())["state"] == "sent"


def test_a_wall_clock_step_back_delays_a_retry_at_most_retry_max(tmp_path: Path) -> None:
    """A retry scheduled before the wall clock stepped back an hour is due retry_max after the
    step, not an hour later."""
    path, writer = _queued(tmp_path, 1)
    sub = RecordingSubmitter(failures=[TransientDeliveryError("data", "later", code=451)])
    wall, mono = FakeClock(), FakeClock(start=1000.0)  # the monotonic clock apart

    async def go() -> None:
        db = OutboxWorker(Outbox(path))
        dispatcher = _dispatcher(db, sub, wall, mono=mono)
        stopping = asyncio.Event()
        await dispatcher.pass_once(stopping)  # 451: due in about 5 s
        wall.advance(-3600.0)
        await dispatcher.pass_once(stopping)
        assert not sub.sent
        wall.advance(DELIVERY.retry_max + 1)
        await dispatcher.pass_once(stopping)
        db.shutdown()

    asyncio.run(go())
    assert len(sub.sent) == 1
    assert next(writer.alerts())["state"] == "sent"


def test_a_wall_clock_step_back_shortens_a_repeat_window(tmp_path: Path) -> None:
    """A repeat window that ends further ahead than mail.repeat_window (the wall clock stepped
    back) is brought back to the window's length from now."""
    path = tmp_path / "outbox.db"
    writer = Outbox(path)
    now = 1_800_000_000.0
    writer.ingest([pending_decision(1, at=now)])
    rules = GroupingRules(repeat_window=600.0)
    plan_mails(writer, now, "example.com", "gw-1", rules)
    writer.ingest([pending_decision(2, at=now + 1, payload=b"again")])
    plan_mails(writer, now + 1, "example.com", "gw-1", rules)
    (held,) = writer._conn.execute("SELECT window_until FROM threads").fetchone()
    assert held > now  # the repeat is held for its window
    stepped = now - 3600.0
    # The thread's window and the first mail's due time (now, an hour after `stepped`).
    assert writer.clamp_due(stepped, DELIVERY.retry_max, rules.repeat_window) == 2
    (until,) = writer._conn.execute("SELECT window_until FROM threads").fetchone()
    assert until == stepped + 600.0
    (due,) = writer._conn.execute("SELECT next_attempt_at FROM mails").fetchone()
    assert due == stepped + DELIVERY.retry_max
    assert writer.clamp_due(stepped, DELIVERY.retry_max, rules.repeat_window) == 0
