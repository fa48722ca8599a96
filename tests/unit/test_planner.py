"""planner: mails, Message-IDs, thread roots, suppressed counts and notices, decided without
a database (the outbox's Backlog in, a MailPlan out)."""

from __future__ import annotations

from agent.identity import message_id
from agent.models import BlockEvent, FaultState, MailKind, Severity
from agent.outbox import Backlog, MailIds, ThreadState, UnplannedAlert, thread_key
from agent.planner import BlockNotice, GroupingRules, decide

IDS = MailIds(first=41, instance="abc123")
ONE_BY_ONE = GroupingRules()


def _alert(
    id: int, uid: str = "pump-17", code: str = "E042", severity: Severity = Severity.ERROR
) -> UnplannedAlert:
    return UnplannedAlert(
        id=id,
        uid=uid,
        code=code,
        severity=severity,
        fault_state=FaultState.ACTIVE,
        received_at=100.0 + id,
        recipients=("ops@example.com",),
    )


def _backlog(
    alerts: list[UnplannedAlert],
    threads: dict[str, ThreadState] | None = None,
    suppressed: dict[str, int] | None = None,
) -> Backlog:
    return Backlog(alerts=alerts, threads=threads or {}, suppressed=suppressed or {}, ids=IDS)


def test_message_id_format() -> None:
    """gateway, database instance and mail id, in the From domain."""
    assert message_id("gw-1", "abc123", 7, "example.com") == "<faultmail.gw-1.abc123.7@example.com>"


def test_mails_get_consecutive_ids_and_their_message_ids() -> None:
    """Each planned mail takes the next id from the outbox's MailIds and its Message-ID."""
    plan = decide(
        _backlog([_alert(1, uid="a"), _alert(2, uid="b")]), 200.0, "ex.org", "gw", ONE_BY_ONE
    )
    assert [(m.id, m.message_id) for m in plan.mails] == [
        (41, "<faultmail.gw.abc123.41@ex.org>"),
        (42, "<faultmail.gw.abc123.42@ex.org>"),
    ]
    assert all(m.created_at == 200.0 for m in plan.mails)


def test_first_mail_of_a_thread_is_its_root_for_the_rest() -> None:
    """Without grouping every repeat is a mail; the first one opens the thread, the others
    answer it, and the thread stored remembers it."""
    plan = decide(_backlog([_alert(1), _alert(2)]), 200.0, "ex.org", "gw", ONE_BY_ONE)
    first, second = plan.mails
    assert first.in_reply_to is None and second.in_reply_to == first.message_id
    (thread,) = plan.threads
    assert thread.key == thread_key("pump-17", "E042")
    assert thread.root_message_id == first.message_id


def test_a_known_thread_keeps_its_root() -> None:
    """A closed thread that opens again answers the first mail it ever had."""
    key = thread_key("pump-17", "E042")
    old = ThreadState(key, 1.0, False, None, Severity.ERROR.rank, "<old@ex.org>")
    plan = decide(_backlog([_alert(1)], threads={key: old}), 200.0, "ex.org", "gw", ONE_BY_ONE)
    assert plan.mails[0].in_reply_to == "<old@ex.org>"
    assert plan.threads[0].root_message_id == "<old@ex.org>"


def test_suppressed_count_goes_to_the_first_mail_of_the_device_only() -> None:
    """The count is reported once, by the device's first mail, and marked for reset."""
    alerts = [_alert(1, code="E1"), _alert(2, code="E2"), _alert(3, uid="q")]
    plan = decide(_backlog(alerts, suppressed={"pump-17": 5}), 200.0, "ex.org", "gw", ONE_BY_ONE)
    assert [m.suppressed_before for m in plan.mails] == [5, 0, 0]
    assert plan.reported == {"pump-17"}


def test_a_digest_reports_no_suppressed_count_and_has_no_thread() -> None:
    """A digest is about many devices: the counts wait for each device's own next mail."""
    alerts = [_alert(i, uid=f"d{i}") for i in range(1, 4)]
    rules = GroupingRules(repeat_window=600.0, digest_threshold=3)
    plan = decide(_backlog(alerts, suppressed={"d1": 2}), 200.0, "ex.org", "gw", rules)
    (digest,) = plan.mails
    assert (digest.kind, digest.thread_key, digest.suppressed_before) == (MailKind.DIGEST, None, 0)
    assert digest.alert_ids == (1, 2, 3) and plan.reported == set()


def test_block_notice_makes_one_critical_mail_per_audience() -> None:
    """Security and operations each get a notice, due when the block happened; an audience
    without recipients gets none."""
    event = BlockEvent("rogue", "devices/rogue/fault", 10.0, 12.0, 50.0, 100, ("x",), "flood")
    both = BlockNotice(event, ("sec@ex.org",), ("ops@ex.org",), "gw", "ex.org").notice_mails(IDS)
    assert [(m.id, m.kind, m.recipients) for m in both] == [
        (41, MailKind.SECURITY_NOTICE, ("sec@ex.org",)),
        (42, MailKind.BLOCK_NOTICE, ("ops@ex.org",)),
    ]
    assert all(m.severity_rank == Severity.CRITICAL.rank and m.created_at == 12.0 for m in both)
    assert both[1].message_id == "<faultmail.gw.abc123.42@ex.org>"
    assert both[0].notice is not None and both[0].notice["samples"] == ["x"]
    ops_only = BlockNotice(event, (), ("ops@ex.org",), "gw", "ex.org").notice_mails(IDS)
    assert [(m.id, m.kind) for m in ops_only] == [(41, MailKind.BLOCK_NOTICE)]
