"""Intake: one message's trouble is recorded against that message; the batch and the thread go on.

A real outbox on tmp_path, the real parser, policy and flood guard; only the MQTT ack is a fake
that records what was acknowledged, in order.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent import intake as intake_mod
from agent.bounds import OutboxBounds
from agent.errors import OutboxCorrupt, OutboxUnavailable
from agent.flood import FloodGuard
from agent.intake import Intake
from agent.liveness import Stage, StageState
from agent.models import AlertState, Decision, Fault, RawMessage, Rejection, Severity
from agent.outbox import Outbox
from agent.parse import ParseLimits
from agent.policy import Policy
from agent.settings import Allowlist, FloodSettings, OutboxSettings, Route
from agent.triage import NoticeRouting, Rules

FILTERS = ["devices/+/fault"]
ROUTES = [Route(topics=FILTERS, min_severity=Severity.INFO, to=["ops@example.com"])]
FLOOD = FloodSettings(rate=1000.0, burst=1000, block_threshold=100_000)


class Poison(BaseException):
    """Escapes every per-message handler (they catch Exception): stands for a bug that kills."""


def _raw(uid: str, seq: int, *, mid: int | None = None, payload: bytes | None = None) -> RawMessage:
    body = (
        payload
        or json.dumps(
            {"code": "E1", "severity": "critical", "message": f"m{seq}", "seq": seq}
        ).encode()
    )
    return RawMessage(
        topic=f"devices/{uid}/fault",
        payload=body,
        mid=mid if mid is not None else seq,
        qos=1,
        dup=False,
        received_at=1_800_000_000.0 + seq,
        received_mono=100.0 + seq,
    )


class Acks:
    """The MQTT side: records acknowledged message ids in order."""

    def __init__(self) -> None:
        self.mids: list[int] = []

    def __call__(self, raw: RawMessage) -> bool:
        self.mids.append(raw.mid)
        return True


class TrappedPolicy(Policy):
    """The real policy, except for payloads that contain `trap`: those raise `exc`."""

    def __init__(self, trap: bytes, exc: BaseException | Callable[[RawMessage], Decision]) -> None:
        super().__init__(ROUTES, Allowlist(["example.com"], []))
        self._trap = trap
        self._exc = exc

    def decide(self, raw: RawMessage, parsed: Fault | Rejection) -> Decision:
        if self._trap in raw.payload:
            if isinstance(self._exc, BaseException):
                raise self._exc
            return self._exc(raw)
        return super().decide(raw, parsed)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def _intake(
    outbox: Outbox,
    acks: Acks,
    *,
    policy: Policy | None = None,
    flood: FloodGuard | None = None,
    stage: Stage | None = None,
) -> Intake:
    return Intake(
        outbox,
        Rules(
            policy=policy or Policy(ROUTES, Allowlist(["example.com"], [])),
            filters=FILTERS,
            limits=ParseLimits(),
            flood=flood or FloodGuard(FLOOD),
            notices=NoticeRouting(security=(), gateway_id="gw-1", domain="example.com"),
        ),
        ack=acks,
        on_stored=lambda urgent: None,
        bounds=OutboxBounds(OutboxSettings()),
        stage=stage,
    )


def _alerts(outbox: Outbox) -> list[dict[str, Any]]:
    return sorted(outbox.alerts(), key=lambda a: a["id"])


def _by_seq(outbox: Outbox) -> dict[int | None, tuple[str, str | None]]:
    return {a["seq"]: (a["state"], a["reason"]) for a in _alerts(outbox)}


def test_mixed_batch_is_stored_once_and_acked_in_arrival_order(outbox: Outbox) -> None:
    """Good, rejected and unrouted messages of one batch are all stored, then acked in order."""
    acks = Acks()
    batch = [_raw("p1", 1), _raw("p2", 2, payload=b"{broken"), _raw("p3", 3), _raw("p4", 4)]
    _intake(outbox, acks).process(batch)
    assert acks.mids == [1, 2, 3, 4]
    assert [a["state"] for a in _alerts(outbox)] == ["pending", "rejected", "pending", "pending"]


def test_exception_in_policy_costs_only_that_message(outbox: Outbox) -> None:
    """A bug in policy for one message makes it rejected internal_error; the rest are stored."""
    acks = Acks()
    policy = TrappedPolicy(b"m2", RuntimeError("bug"))
    _intake(outbox, acks, policy=policy).process([_raw("p1", 1), _raw("p2", 2), _raw("p3", 3)])
    assert acks.mids == [1, 2, 3]
    states = [(a["uid"], a["state"], a["reason"]) for a in _alerts(outbox)]
    assert states == [
        ("p1", "pending", None),
        ("p2", "rejected", "internal_error: RuntimeError"),
        ("p3", "pending", None),
    ]
    sample = outbox._conn.execute(
        "SELECT payload_sample FROM alerts WHERE state = 'rejected'"
    ).fetchone()[0]
    assert b"m2" in sample


def test_exception_in_flood_guard_costs_only_that_message(outbox: Outbox) -> None:
    """A bug in the flood guard for one device rejects that message only, with the type."""

    class Broken(FloodGuard):
        def admit(self, uid: str, raw: RawMessage) -> Any:
            if uid == "p2":
                raise KeyError(uid)
            return super().admit(uid, raw)

    acks = Acks()
    _intake(outbox, acks, flood=Broken(FLOOD)).process([_raw("p1", 1), _raw("p2", 2)])
    assert acks.mids == [1, 2]
    assert [(a["state"], a["reason"]) for a in _alerts(outbox)] == [
        ("pending", None),
        ("rejected", "internal_error: KeyError"),
    ]


def _unstorable(raw: RawMessage) -> Decision:
    """What a bug could hand the outbox: text that cannot be encoded (a lone surrogate)."""
    return Decision(raw=raw, fault=None, state=AlertState.REJECTED, reason="x\ud800")


def test_unstorable_message_does_not_hold_back_its_neighbours(outbox: Outbox) -> None:
    """A message the outbox cannot store (UnicodeEncodeError) is stored alone as internal_error;
    every neighbour in its batch is stored and all are acknowledged in order."""
    acks = Acks()
    policy = TrappedPolicy(b"m3", _unstorable)
    batch = [_raw(f"p{i}", i) for i in range(1, 6)]
    _intake(outbox, acks, policy=policy).process(batch)
    assert acks.mids == [1, 2, 3, 4, 5]
    assert _by_seq(outbox) == {
        None: ("rejected", "internal_error: UnicodeEncodeError"),
        1: ("pending", None),
        2: ("pending", None),
        4: ("pending", None),
        5: ("pending", None),
    }
    devices = {d["uid"]: d for d in outbox.devices()}
    assert devices["p3"]["rejected"] == 1 and devices["p1"]["received"] == 1


def test_topic_that_cannot_be_encoded_is_stored_valid(outbox: Outbox) -> None:
    """A topic with a lone surrogate (ingest decodes with 'replace'; this is the second line of
    defence) is stored with U+FFFD and does not stop the batch."""
    acks = Acks()
    bad = RawMessage("devices/p\ud800/fault", b"{}", 2, 1, False, 1.0, received_mono=1.0)
    _intake(outbox, acks).process([_raw("p1", 1), bad, _raw("p3", 3)])
    assert acks.mids == [1, 2, 3]
    topics = [a["topic"] for a in _alerts(outbox)]
    assert "devices/p\ufffd/fault" in topics and len(topics) == 3


def test_corrupt_outbox_is_not_retried(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """OutboxCorrupt leaves process() (the stage dies, the daemon exits 3); nothing is acked."""
    acks = Acks()
    intake = _intake(outbox, acks)

    def corrupt(*args: object, **kwargs: object) -> None:
        raise OutboxCorrupt("storing alerts: database disk image is malformed")

    monkeypatch.setattr(outbox, "ingest", corrupt)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            intake.process([_raw("p1", 1)])
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    intake._stopping.set()  # ends the retry loop of a build that would retry corruption
    worker.join()
    assert [type(e) for e in outcome] == [OutboxCorrupt]
    assert acks.mids == []


def test_unavailable_storage_is_retried_then_acked(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OutboxUnavailable (disk full) holds the batch unacknowledged and retries it."""
    acks = Acks()
    intake = _intake(outbox, acks)
    real = outbox.ingest
    failures = [OutboxUnavailable("storing alerts: database or disk is full")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(outbox, "ingest", flaky)
    intake.process([_raw("p1", 1)])
    assert acks.mids == [1] and len(_alerts(outbox)) == 1


def test_stop_while_storage_fails_ends_without_ack(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop during a failing commit: no retry, nothing acked, the stage is stopped, not dead."""
    acks = Acks()
    stage = Stage("intake")
    intake = _intake(outbox, acks, stage=stage)
    attempted = threading.Event()

    def full(*args: object, **kwargs: object) -> None:
        attempted.set()
        raise OutboxUnavailable("storing alerts: database or disk is full")

    monkeypatch.setattr(outbox, "ingest", full)
    intake.start()
    intake.submit(_raw("p1", 1))
    assert attempted.wait(10)
    intake.stop()
    assert acks.mids == []
    assert stage.report().state is StageState.STOPPED


def test_idle_thread_beats(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing to do the intake thread still beats every HEARTBEAT_S, and stops cleanly."""
    monkeypatch.setattr(intake_mod, "HEARTBEAT_S", 0.01)
    beats = threading.Semaphore(0)

    class Counting(Stage):
        def beat(self) -> None:
            super().beat()
            beats.release()

    stage = Counting("intake")
    intake = _intake(outbox, Acks(), stage=stage)
    intake.start()
    assert all(beats.acquire(timeout=10) for _ in range(5))
    intake.stop()
    assert stage.report().state is StageState.STOPPED


def _fingerprints(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT fingerprint, deaths FROM poison"))


def _run_until_death(intake: Intake, batch: list[RawMessage], stage: Stage) -> None:
    """Feed one batch to the running thread and wait until it finishes or dies."""
    intake.start()
    for raw in batch:
        intake.submit(raw)
    intake.stop()
    assert stage.report().state in (StageState.DEAD, StageState.STOPPED)


def test_escaping_exception_fails_the_stage_and_records_the_batch(
    outbox: Outbox, tmp_path: Path
) -> None:
    """What escapes process() ends the thread through stage.failed, after the batch's
    fingerprints are recorded in the poison table; nothing is acknowledged."""
    failures: list[BaseException] = []
    stage = Stage("intake", on_failure=lambda s, exc: failures.append(exc))
    acks = Acks()
    intake = _intake(outbox, acks, policy=TrappedPolicy(b"m2", Poison()), stage=stage)
    _run_until_death(intake, [_raw("p1", 1), _raw("p2", 2)], stage)
    assert [type(e) for e in failures] == [Poison]
    assert stage.report().state is StageState.DEAD
    assert acks.mids == []
    assert sorted(_fingerprints(tmp_path / "outbox.db").values()) == [1, 1]


def test_message_that_killed_twice_is_quarantined(tmp_path: Path) -> None:
    """A message that killed the intake twice is stored as rejected 'quarantined' and acked;
    its neighbours from the same batches are stored normally, and none of them is lost."""
    path = tmp_path / "outbox.db"
    batch = [_raw("p1", 1), _raw("p2", 2), _raw("p3", 3)]
    acked: list[int] = []
    deaths = 0
    for _run in range(3):
        # Each run is a restarted daemon: the broker redelivers everything not yet acked.
        box = Outbox(path)
        acks = Acks()
        stage = Stage("intake")
        intake = _intake(box, acks, policy=TrappedPolicy(b"m2", Poison()), stage=stage)
        _run_until_death(intake, [r for r in batch if r.mid not in acked], stage)
        deaths += stage.report().state is StageState.DEAD
        acked += acks.mids
        box.close()
    assert deaths == 2
    assert sorted(acked) == [1, 2, 3]
    box = Outbox(path)
    states = _by_seq(box)
    box.close()
    assert states[1] == ("pending", None) and states[3] == ("pending", None)
    state, reason = states[None]
    assert state == "rejected" and reason is not None
    assert reason.startswith("quarantined: ") and "Poison" in reason


def test_no_poison_lookup_while_the_table_is_empty(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an empty poison table the outbox is asked once, not once per batch."""
    calls: list[int] = []
    real = outbox.has_poison

    def counting() -> bool:
        calls.append(1)
        return real()

    monkeypatch.setattr(outbox, "has_poison", counting)
    monkeypatch.setattr(outbox, "poison_deaths", lambda fps: pytest.fail("looked up"))
    intake = _intake(outbox, Acks())
    for i in range(1, 4):
        intake.process([_raw("p1", i)])
    assert calls == [1]


def test_flood_guard_uses_arrival_on_the_monotonic_clock(outbox: Outbox) -> None:
    """A wall-clock step back between batches does not rate-limit the next alert."""
    acks = Acks()
    flood = FloodGuard(FloodSettings(rate=1.0, burst=2, block_threshold=100))
    intake = _intake(outbox, acks, flood=flood)
    first = _raw("p1", 1)
    intake.process([first])
    stepped = RawMessage(
        first.topic, _raw("p1", 2).payload, 2, 1, False, first.received_at - 3600.0, 0, 102.0
    )
    intake.process([stepped])
    assert [a["state"] for a in _alerts(outbox)] == ["pending", "pending"]


def test_retained_replay_is_acknowledged_and_not_stored_again(outbox: Outbox) -> None:
    """A broker replay (retain flag) of a fault already stored, in the same batch or after,
    is acknowledged and counted as a duplicate, never a second alert."""
    acks = Acks()
    body = json.dumps({"code": "LVL", "severity": "critical", "message": "Tank low"}).encode()
    live = _raw("tank", 1, payload=body)
    intake = _intake(outbox, acks)
    intake.process([live, replace(live, mid=2, retain=True)])
    intake.process([replace(live, mid=3, retain=True)])
    assert acks.mids == [1, 2, 3]
    assert [(a["uid"], a["retained"]) for a in _alerts(outbox)] == [("tank", 0)]
    assert intake._metrics.snapshot().get(("alerts_received", "duplicate")) == 2


def test_oversized_sample_is_rejected_with_its_size_and_acknowledged(outbox: Outbox) -> None:
    """What ingest queues of an oversized payload (a sample and the size) is stored rejected
    too_large with that size, 512 bytes of it at most, and acknowledged."""
    acks = Acks()
    big = replace(_raw("p1", 1, payload=b"x" * 512), size=50_000_000)
    _intake(outbox, acks).process([big, _raw("p2", 2)])
    assert acks.mids == [1, 2]
    assert [(a["state"], a["reason"]) for a in _alerts(outbox)] == [
        ("rejected", "too_large: payload is 50000000 bytes, the limit is 16384"),
        ("pending", None),
    ]
