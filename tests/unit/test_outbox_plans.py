"""outbox.plans: what a planning pass reads and that its plan is stored whole or not at all."""

from __future__ import annotations

import pytest

from agent.models import DeviceDelta
from agent.outbox import Backlog, MailPlan, Outbox
from agent.planner import plan_mails
from tests.unit.conftest import pending_decision


def test_suppressed_count_reaches_the_next_mail_of_that_device_once(outbox: Outbox) -> None:
    """Alerts the rate limit suppressed are reported by the device's next mail (only the first
    of that pass) and then reset; other devices' mails report nothing."""
    outbox.ingest([], [DeviceDelta("p", "devices/p/fault", 1.0, received=4, suppressed=4)])
    outbox.ingest(
        [
            pending_decision(1, uid="p", code="E1"),
            pending_decision(2, uid="p", code="E2"),
            pending_decision(3, uid="q", code="E1"),
        ]
    )
    plan_mails(outbox, 10.0, "example.com", "gw")
    mails = outbox.claim_due(10.0, 10)
    reported = {(m.alerts[0].uid, m.alerts[0].code): m.suppressed_before for m in mails}
    assert reported == {("p", "E1"): 4, ("p", "E2"): 0, ("q", "E1"): 0}
    outbox.ingest([pending_decision(4, uid="p", code="E3")])
    plan_mails(outbox, 20.0, "example.com", "gw")
    later = [m for m in outbox.claim_due(20.0, 10) if m.alerts[0].code == "E3"]
    assert [m.suppressed_before for m in later] == [0]


def test_the_backlog_is_what_waits_and_ids_follow_the_last_mail(outbox: Outbox) -> None:
    """decide sees the alerts without a mail, the suppressed counts, and the next mail id."""
    outbox.ingest([], [DeviceDelta("p", "devices/p/fault", 1.0, received=2, suppressed=2)])
    outbox.ingest([pending_decision(1, uid="p"), pending_decision(2, uid="q")])
    plan_mails(outbox, 5.0, "example.com", "gw")
    outbox.ingest([pending_decision(3, uid="r")])
    seen: list[Backlog] = []

    def decide(backlog: Backlog) -> MailPlan:
        seen.append(backlog)
        return MailPlan()

    assert outbox.plan(decide) == 0
    (backlog,) = seen
    assert [a.uid for a in backlog.alerts] == ["r"]
    assert backlog.suppressed == {}  # p's count went with its mail; r has none
    assert (backlog.ids.first, backlog.ids.instance) == (3, outbox.instance)


def test_a_failing_decision_stores_nothing(outbox: Outbox) -> None:
    """An exception in decide rolls the pass back: the alerts still wait for the next one."""
    outbox.ingest([pending_decision(1)])

    def decide(backlog: Backlog) -> MailPlan:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        outbox.plan(decide)
    assert plan_mails(outbox, 1.0, "example.com", "gw") == 1


def test_no_waiting_alert_means_no_decision(outbox: Outbox) -> None:
    """With nothing to plan, decide is not called."""

    def decide(backlog: Backlog) -> MailPlan:
        raise AssertionError("called")

    assert outbox.plan(decide) == 0
