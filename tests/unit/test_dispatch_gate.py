"""The relay gate: relay-level failures pause the queue, probes only where they can help, and
the per-minute cap counts on the monotonic clock."""

from __future__ import annotations

import random

from agent.dispatch.gate import CAP_WINDOW_S, RelayGate
from agent.errors import TransientDeliveryError
from agent.settings import DeliverySettings
from tests.fakes import FakeClock


def _gate(clock: FakeClock, cap: int = 0) -> RelayGate:
    return RelayGate(DeliverySettings(max_mails_per_minute=cap), clock, random.Random(1))


def test_a_mail_level_failure_does_not_pause() -> None:
    """A 451 for one mail says nothing about the relay: the gate stays open."""
    gate = _gate(FakeClock())
    assert not gate.failed(TransientDeliveryError("data", "later", code=451), 5.0)
    assert not gate.paused


def test_connect_failure_pauses_and_probes_until_reopened() -> None:
    """A connect failure pauses for the delay with probing; reopen ends the pause at once."""
    clock = FakeClock()
    gate = _gate(clock)
    assert gate.failed(TransientDeliveryError("connect", "refused", kind="connect"), 5.0)
    assert gate.paused and gate.probing and gate.pause_left(clock()) == 5.0
    gate.reopen()
    assert not gate.paused and not gate.probing


def test_auth_failure_pauses_without_probing() -> None:
    """A login problem needs a person: the queue pauses, but no probe repeats it faster."""
    clock = FakeClock()
    gate = _gate(clock)
    assert gate.failed(TransientDeliveryError("auth", "535", kind="auth"), 5.0)
    assert gate.paused and not gate.probing
    clock.advance(5.0)
    assert not gate.paused


def test_cap_admits_n_per_window_then_says_how_long_to_wait() -> None:
    """With a cap of 2 per minute a third mail waits until the first slot is a minute old."""
    clock = FakeClock()
    gate = _gate(clock, cap=2)
    assert gate.take_slot() and gate.take_slot()
    clock.advance(10.0)
    assert not gate.take_slot()
    assert gate.slot_wait(clock()) == CAP_WINDOW_S - 10.0
    assert gate.slot_wait(clock()) is None  # asked once per cap reached
    clock.advance(CAP_WINDOW_S - 10.0)
    assert gate.take_slot()
