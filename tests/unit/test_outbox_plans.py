"""outbox.plans: what a planning pass reads and that its plan is stored whole or not at all."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.models import DeviceDelta, MailKind
from agent.outbox import Backlog, MailPlan, Outbox
from agent.outbox.plans import NewMail, ThreadState
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


def test_a_plan_stores_every_mail_its_alerts_and_threads_in_one_pass(outbox: Outbox) -> None:
    """Mails of one pass (a digest, single-alert mails, a notice without alerts) are stored
    with their fields; each alert points at exactly its mail, an alert no mail carries still
    waits, and every thread the plan names is written (an existing one replaced)."""
    outbox.ingest([pending_decision(seq, uid=f"p{seq}", code="E") for seq in range(1, 7)])

    def mail(mail_id: int, kind: MailKind, alerts: tuple[int, ...], **extra: Any) -> NewMail:
        return NewMail(
            id=mail_id,
            message_id=f"<m{mail_id}@example.com>",
            kind=kind,
            recipients=("a@example.com", f"b{mail_id}@example.com"),
            severity_rank=mail_id % 4,
            created_at=10.0 + mail_id,
            alert_ids=alerts,
            **extra,
        )

    def threads(opened: float) -> list[ThreadState]:
        return [ThreadState(f"k{i}", opened, bool(i % 2), None, i) for i in range(1, 4)]

    plans = iter(
        [
            MailPlan(mails=[], threads=threads(1.0)),
            MailPlan(
                mails=[
                    mail(1, MailKind.DIGEST, (5, 2, 3), thread_key="k1", in_reply_to="<r>"),
                    mail(2, MailKind.ALERT, (1,), suppressed_before=4),
                    mail(3, MailKind.BLOCK_NOTICE, (), notice={"uid": "rogue"}),
                    mail(4, MailKind.ALERT, (4,)),
                ],
                threads=threads(2.0),
            ),
        ]
    )
    assert outbox.plan(lambda backlog: next(plans)) == 0
    assert outbox.plan(lambda backlog: next(plans)) == 4
    carried = dict(outbox._conn.execute("SELECT id, mail_id FROM alerts").fetchall())
    assert carried == {1: 2, 2: 1, 3: 1, 4: 4, 5: 1, 6: None}
    rows = {r["id"]: r for r in outbox._conn.execute("SELECT * FROM mails")}
    assert json.loads(rows[1]["recipients"]) == ["a@example.com", "b1@example.com"]
    assert (rows[1]["kind"], rows[1]["thread_key"], rows[1]["in_reply_to"]) == (
        "digest",
        "k1",
        "<r>",
    )
    assert (rows[2]["suppressed_before"], rows[2]["next_attempt_at"]) == (4, 12.0)
    assert json.loads(rows[3]["notice"]) == {"uid": "rogue"} and rows[4]["notice"] is None
    assert {r["state"] for r in rows.values()} == {"pending"}
    stored = outbox._conn.execute("SELECT key, opened_at, is_open FROM threads ORDER BY key")
    assert [tuple(r) for r in stored] == [("k1", 2.0, 1), ("k2", 2.0, 0), ("k3", 2.0, 1)]
