"""The flood guard: rate limit, automatic block, unblock; and what the outbox records of it."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from agent.compose import ComposeContext, compose
from agent.flood import FloodGuard
from agent.models import Admission, MailKind, RawMessage
from agent.outbox import Outbox
from agent.planner import BlockNotice
from agent.settings import FloodSettings

SETTINGS = FloodSettings(rate=1.0, burst=5, block_threshold=50, block_window=10.0, samples=2)


def _raw(t: float, payload: bytes = b'{"code": "X"}', uid: str = "rogue") -> RawMessage:
    return RawMessage(
        topic=f"devices/{uid}/fault", payload=payload, mid=1, qos=1, dup=False, received_at=t
    )


def test_burst_then_rate() -> None:
    """A device gets `burst` alerts at once, then one per 1/rate s; the excess is suppressed."""
    guard = FloodGuard(SETTINGS)
    answers = [guard.admit("d1", _raw(100.0))[0] for _ in range(8)]
    assert answers == [Admission.ADMIT] * 5 + [Admission.SUPPRESS] * 3
    assert guard.admit("d1", _raw(101.0))[0] is Admission.ADMIT
    assert guard.admit("d1", _raw(101.1))[0] is Admission.SUPPRESS
    assert guard.admit("d2", _raw(101.1))[0] is Admission.ADMIT  # other devices unaffected


def test_block_over_threshold_once() -> None:
    """Crossing the block threshold blocks once, with rate, count and escaped samples."""
    guard = FloodGuard(SETTINGS)
    results = [
        guard.admit("rogue", _raw(200.0 + i * 0.01, b'\x00{"evil":"\r\n"}')) for i in range(60)
    ]
    blocks = [event for adm, event in results if adm is Admission.BLOCK]
    assert len(blocks) == 1
    event = blocks[0]
    assert event is not None and event.uid == "rogue" and event.count == 51
    assert event.rate_per_s > 50 and len(event.samples) == 2
    assert all("\r" not in s and "\n" not in s and "\x00" not in s for s in event.samples)
    assert [adm for adm, _ in results[51:]] == [Admission.DROP] * 9
    assert guard.blocked == {"rogue"}


def test_unblock_starts_clean() -> None:
    """After an unblock from the CLI the device is admitted again with a fresh bucket."""
    guard = FloodGuard(SETTINGS, blocked={"rogue"})
    assert guard.admit("rogue", _raw(1.0))[0] is Admission.DROP
    guard.set_blocked(set())
    assert guard.admit("rogue", _raw(2.0))[0] is Admission.ADMIT


def test_block_is_persisted_with_two_notices(tmp_path: Path) -> None:
    """The outbox records the block, an audit row, and one mail each to security and ops."""
    guard = FloodGuard(SETTINGS)
    event = None
    for i in range(51):
        _, event = guard.admit("rogue", _raw(300.0 + i * 0.01))
    assert event is not None
    box = Outbox(tmp_path / "outbox.db")
    box.ingest(
        [],
        blocks=[
            BlockNotice(
                event, ("security@example.com",), ("ops@example.com",), "gw-1", "example.com"
            )
        ],
    )
    assert box.blocked_uids() == {"rogue"}
    mails = box.claim_due(1e12, 10)
    assert sorted(m.kind for m in mails) == [MailKind.BLOCK_NOTICE, MailKind.SECURITY_NOTICE]
    ctx = ComposeContext(sender="GW <gw@example.com>", gateway_id="gw-1", site="")
    security = next(m for m in mails if m.kind is MailKind.SECURITY_NOTICE)
    msg = compose(security, ctx, 400.0).message()
    assert msg["To"] == "security@example.com"
    assert str(msg["Subject"]).startswith("[SECURITY] Device rogue blocked on gw-1")
    text = msg.get_body(("plain",))
    assert text is not None and "devices/rogue/fault" in text.get_content()
    assert "faultmail devices unblock rogue" in text.get_content()
    assert [r["outcome"] for r in box.audit_log()] == ["blocked"]
    assert box.set_blocked("rogue", False, "", 500.0, "tech")
    assert box.blocked_uids() == set()
    box.close()


def _at(wall: float, mono: float, uid: str = "rogue", payload: bytes = b"{}") -> RawMessage:
    return RawMessage(
        topic=f"devices/{uid}/fault",
        payload=payload,
        mid=1,
        qos=1,
        dup=False,
        received_at=wall,
        received_mono=mono,
    )


def test_wall_clock_step_back_suppresses_nobody() -> None:
    """An hour's NTP step backwards does not drain the bucket: rates run on the monotonic clock."""
    guard = FloodGuard(SETTINGS)
    assert guard.admit("d1", _at(10_000.0, 50.0))[0] is Admission.ADMIT
    answers = [guard.admit("d1", _at(6_400.0 + i, 51.0 + i))[0] for i in range(3)]
    assert answers == [Admission.ADMIT] * 3


def test_wall_clock_step_forward_refills_nothing() -> None:
    """A step forwards does not refill an empty bucket: a flood stays limited."""
    guard = FloodGuard(SETTINGS)
    answers = [guard.admit("d1", _at(10_000.0, 50.0))[0] for _ in range(6)]
    assert answers[-1] is Admission.SUPPRESS
    assert guard.admit("d1", _at(13_600.0, 50.1))[0] is Admission.SUPPRESS


def test_block_window_is_monotonic_and_stamps_are_wall_time() -> None:
    """Crossing the threshold across a wall step still blocks; the event carries wall stamps."""
    guard = FloodGuard(SETTINGS)
    results = [
        guard.admit("rogue", _at((10_000.0 if i < 25 else 6_400.0) + i * 0.01, 50.0 + i * 0.01))
        for i in range(51)
    ]
    adm, event = results[-1]
    assert adm is Admission.BLOCK and event is not None and event.count == 51
    assert event.blocked_at == 6_400.0 + 50 * 0.01
    assert event.started_at == event.blocked_at - 0.5
    assert event.rate_per_s == round(51 / 0.5, 1)


def test_forget_idle_uses_the_monotonic_clock() -> None:
    """Idle state is dropped by monotonic age: an unblocked device's bucket is full again."""
    guard = FloodGuard(SETTINGS)
    for _ in range(6):
        guard.admit("d1", _at(10_000.0, 50.0))
    guard.forget_idle(50.0 + 11.0)
    assert guard.admit("d1", _at(6_400.0, 61.0))[0] is Admission.ADMIT


# Item 8 (issue 14): per-UID state must not outlive its use, nor grow with the number of UIDs.
SLOW_REFILL = FloodSettings(rate=0.01, burst=5, block_threshold=50, block_window=10.0, samples=2)


def test_idle_state_is_freed_even_when_the_bucket_refills_slower_than_the_window() -> None:
    """burst / rate (500 s) > block_window (10 s): a device idle for two days holds no state."""
    guard = FloodGuard(SLOW_REFILL)
    for i in range(200):
        guard.admit(f"dev-{i}", _at(1_000.0, 50.0))
    guard.forget_idle(50.0 + 20.0)  # past the window, not yet refilled: kept
    guard.forget_idle(50.0 + 2 * 86_400.0)
    assert guard.tracked == 0


def test_state_forgotten_after_idle_behaves_like_a_full_bucket() -> None:
    """Forgetting is lossless once the bucket would have refilled: the device gets its burst."""
    guard = FloodGuard(SLOW_REFILL)
    answers = [guard.admit("d1", _at(1_000.0, 50.0))[0] for _ in range(6)]
    assert answers[-1] is Admission.SUPPRESS
    guard.forget_idle(50.0 + 20.0)
    # Not yet refilled: still limited after the window's housekeeping.
    assert guard.admit("d1", _at(1_020.0, 70.0))[0] is Admission.SUPPRESS
    guard.forget_idle(70.0 + 600.0)
    answers = [guard.admit("d1", _at(2_000.0, 700.0))[0] for _ in range(6)]
    assert answers == [Admission.ADMIT] * 5 + [Admission.SUPPRESS]


def test_100000_distinct_uids_leave_the_tracked_state_bounded() -> None:
    """A topic sweep over 100,000 UIDs (no idle time at all) keeps at most max_devices entries."""
    settings = FloodSettings(rate=0.01, burst=5, block_window=3600.0, samples=3, max_devices=2000)
    guard = FloodGuard(settings)
    payload = b'{"code": "' + b"X" * 300 + b'"}'
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            guard.admit(f"uid-{i}", _at(1_000.0 + i * 0.001, 50.0 + i * 0.001, payload=payload))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 8 * 1024 * 1024, f"flood state grew by {grown / 2**20:.1f} MiB"
    assert guard.tracked <= 2000


def test_the_idlest_device_gives_way_not_the_busy_one() -> None:
    """At max_devices, the device quiet the longest is forgotten; a flooding one keeps its count."""
    settings = FloodSettings(
        rate=1.0, burst=5, block_threshold=200, block_window=60.0, max_devices=100
    )
    guard = FloodGuard(settings)
    for i in range(150):  # a sweep of 150 UIDs, each seen once, the rogue between them
        guard.admit("rogue", _at(1_000.0 + i * 0.01, 50.0 + i * 0.01))
        guard.admit(f"sweep-{i}", _at(1_000.0 + i * 0.01, 50.0 + i * 0.01))
    assert guard.tracked == 100
    for i in range(50):
        guard.admit("rogue", _at(1_002.0 + i * 0.01, 52.0 + i * 0.01))
    # The rogue's window survived the sweep: its 201st message crosses the threshold.
    adm, event = guard.admit("rogue", _at(1_003.0, 53.0))
    assert adm is Admission.BLOCK and event is not None and event.count == 201
