"""models: the typed reason a stage acts on, and the text the outbox stores from it."""

from __future__ import annotations

from agent.models import AlertState, Decision, Fault, RawMessage, Reason, Severity

RAW = RawMessage(topic="devices/p1/fault", payload=b"{}", mid=1, qos=1, dup=False, received_at=1.0)


def test_rejected_decision_stores_reason_and_detail() -> None:
    """A rejection carries its Reason, and the stored text is `<reason>: <detail>`."""
    decision = Decision.rejected(RAW, Reason.UID_MISMATCH, "payload uid differs", "p1")
    assert decision.state is AlertState.REJECTED and decision.fault is None
    assert decision.cause is Reason.UID_MISMATCH
    assert decision.reason == "uid_mismatch: payload uid differs"
    assert decision.uid == "p1"


def test_rejected_decision_is_always_storable() -> None:
    """A topic that is not valid text is made valid, and a UID that is not one is left out."""
    raw = RawMessage("devices/\ud800/fault", b"\xff", 1, 1, False, 1.0)
    decision = Decision.rejected(raw, Reason.INTERNAL_ERROR, "KeyError", "bad uid;")
    decision.raw.topic.encode("utf-8")
    assert decision.uid is None and decision.raw.payload == b"\xff"


def test_suppressed_decision_keeps_the_fault() -> None:
    """A suppression keeps the valid fault and its UID, with the stored `no_route: ...` text."""
    fault = Fault(uid="p1", code="E1", severity=Severity.INFO, message="m")
    decision = Decision.suppressed(RAW, fault, Reason.NO_ROUTE, "nobody wants it")
    assert decision.state is AlertState.SUPPRESSED and decision.fault is fault
    assert decision.reason == "no_route: nobody wants it" and decision.uid == "p1"


def test_only_uid_mismatch_is_suspicious() -> None:
    """Of all reasons only a payload naming another device counts as suspicious."""
    assert [r for r in Reason if r.suspicious] == [Reason.UID_MISMATCH]
