"""quarantine: deaths are blamed on the messages at hand; twice present, a message is rejected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import OutboxCorrupt
from agent.models import AlertState, RawMessage, Reason
from agent.outbox import Outbox
from agent.quarantine import QUARANTINE_AFTER, PoisonList, fingerprint


def _raw(payload: bytes, mid: int = 1) -> RawMessage:
    return RawMessage("devices/p1/fault", payload, mid, 1, False, 1.0)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_fingerprint_ignores_the_packet_id() -> None:
    """A redelivered message has a new packet id but the same fingerprint."""
    assert fingerprint(_raw(b"x", mid=1)) == fingerprint(_raw(b"x", mid=99))
    assert fingerprint(_raw(b"x")) != fingerprint(_raw(b"y"))


def test_a_message_is_convicted_after_quarantine_after_deaths(outbox: Outbox) -> None:
    """Present at one death a batch's messages are suspects (handled one by one); present at
    QUARANTINE_AFTER deaths a message is convicted, its neighbours are not."""
    bad, good = _raw(b"bad"), _raw(b"good", 2)
    PoisonList(outbox).record_death([bad, good], RuntimeError("x"))
    poison = PoisonList(outbox)
    deaths = poison.deaths([bad, good])
    assert poison.suspects([bad, good], deaths) and not poison.suspects([bad], deaths)
    assert poison.convicted(bad, deaths) is None
    for _ in range(QUARANTINE_AFTER - 1):
        PoisonList(outbox).record_death([bad], RuntimeError("x"))
    deaths = PoisonList(outbox).deaths([bad, good])
    assert poison.convicted(bad, deaths) is not None
    assert poison.convicted(good, deaths) is None


def test_quarantined_decision_is_rejected_with_its_reason(outbox: Outbox) -> None:
    """A convicted message becomes rejected `quarantined`, naming the deaths and the error."""
    decision = PoisonList(outbox).quarantine(_raw(b"bad"), "p1", 2, "KeyError: 'x'")
    assert decision.state is AlertState.REJECTED and decision.cause is Reason.QUARANTINED
    assert decision.reason is not None
    assert decision.reason.startswith("quarantined: the intake died 2 times")


def test_corruption_is_not_blamed_on_the_messages(outbox: Outbox) -> None:
    """A death from a damaged outbox records no poison: the alerts are innocent."""
    PoisonList(outbox).record_death([_raw(b"x")], OutboxCorrupt("malformed"))
    assert not outbox.has_poison()
