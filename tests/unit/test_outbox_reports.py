"""outbox.reports: queue figures and the heartbeat that `faultmail status` reads."""

from __future__ import annotations

from agent.outbox import AuditEntry, Outbox
from agent.planner import plan_mails
from tests.unit.conftest import pending_decision


def test_gauges_count_pending_dead_and_blocked(outbox: Outbox) -> None:
    """Pending alerts with the oldest age, pending and dead mails, blocked devices."""
    outbox.ingest([pending_decision(1, at=10.0), pending_decision(2, at=20.0)])
    plan_mails(outbox, 30.0, "example.com", "gw")
    first, _ = outbox.claim_due(30.0, 10)
    outbox.mark_dead(first, 31.0, AuditEntry("send_attempt", "dead", first.id))
    outbox.set_blocked("rogue", True, "", 32.0, "dave")
    g = outbox.gauges(40.0)
    assert (g.pending_alerts, g.pending_mails, g.dead_mails, g.blocked_devices) == (1, 1, 1, 1)
    assert g.oldest_pending_age_s == 20.0 and g.last_sent_at is None
    assert outbox.counts() == {"dead": 1, "pending": 1}


def test_heartbeat_is_what_health_wrote(outbox: Outbox) -> None:
    """health() records time, pid and stages; heartbeat() reads them back."""
    assert outbox.heartbeat() is None
    outbox.health(50.0, 1234, {"intake": {"state": "alive"}})
    assert outbox.heartbeat() == {"ts": 50.0, "pid": 1234, "stages": {"intake": {"state": "alive"}}}
