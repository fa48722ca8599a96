"""planner in group mode: Message-IDs from alert and notice identities, decided without a
database (a Backlog in, a MailPlan out); the fallbacks that keep Message-IDs unique."""

from __future__ import annotations

from agent.identity import alert_identity, group_message_id, message_id, notice_identity
from agent.models import FaultState, MailKind, Severity
from agent.outbox import Backlog, MailIds, ThreadState, UnplannedAlert, thread_key
from agent.outbox.backlog import CodeSpread
from agent.outbox.silences import EndedSilence, SilenceEvents
from agent.planner import GroupingRules, decide, silence_notices
from agent.silences import Silence

GROUP_IDS = MailIds(first=41, instance="abc123", group="g")
DOMAIN = "ex.org"
ONE_BY_ONE = GroupingRules()


def _ident(seq: int) -> str:
    return alert_identity("g", "pump-17", "E042", seq, b"")


def _alert(
    id: int,
    identity: str | None,
    state: FaultState = FaultState.ACTIVE,
    uid: str = "pump-17",
    code: str = "E042",
) -> UnplannedAlert:
    return UnplannedAlert(
        id=id,
        uid=uid,
        code=code,
        severity=Severity.ERROR,
        fault_state=state,
        received_at=100.0 + id,
        recipients=("ops@example.com",),
        identity=identity,
    )


def _backlog(
    alerts: list[UnplannedAlert],
    ids: MailIds = GROUP_IDS,
    threads: dict[str, ThreadState] | None = None,
) -> Backlog:
    return Backlog(alerts=alerts, threads=threads or {}, suppressed={}, ids=ids)


def test_group_mails_are_named_after_their_alert_not_the_database() -> None:
    """The same backlog on two members (other mail ids, other database instances, other
    gateway ids) plans the same Message-IDs."""
    alerts = [_alert(1, _ident(1)), _alert(2, _ident(2), uid="pump-18")]
    here = decide(_backlog(alerts), 200.0, DOMAIN, "gw-a", ONE_BY_ONE)
    there_ids = MailIds(first=900, instance="def456", group="g")
    there = decide(_backlog(alerts, there_ids), 300.0, DOMAIN, "gw-b", ONE_BY_ONE)
    assert (
        [m.message_id for m in here.mails]
        == [m.message_id for m in there.mails]
        == [
            group_message_id("g", "alert", _ident(1), DOMAIN),
            group_message_id("g", "alert", _ident(2), DOMAIN),
        ]
    )
    assert [m.id for m in here.mails] == [41, 42]


def test_a_mail_of_several_alerts_is_named_after_the_lowest_alert_id() -> None:
    """A resolve carrying held repeats takes the identity of its first (lowest id) alert, with
    its own kind, and answers the thread's root."""
    key = thread_key("pump-17", "E042")
    root = group_message_id("g", "alert", _ident(1), DOMAIN)
    thread = ThreadState(key, 100.0, True, 10_000.0, Severity.ERROR.rank, root)
    alerts = [_alert(7, _ident(7)), _alert(5, _ident(5)), _alert(9, _ident(9), FaultState.RESOLVED)]
    plan = decide(
        _backlog(alerts, threads={key: thread}),
        200.0,
        DOMAIN,
        "gw",
        GroupingRules(repeat_window=600.0),
    )
    (mail,) = plan.mails
    assert (mail.kind, mail.alert_ids) == (MailKind.RESOLVED, (7, 5, 9))
    assert mail.message_id == group_message_id("g", "resolved", _ident(5), DOMAIN)
    assert mail.in_reply_to == root


def test_an_alert_without_identity_keeps_the_single_mode_message_id() -> None:
    """An alert stored before schema 5 has no identity: its mail is named as in single mode;
    the thread it opens is rooted there, and a later group mail answers it."""
    plan = decide(
        _backlog([_alert(1, None), _alert(2, _ident(2))]), 200.0, DOMAIN, "gw", ONE_BY_ONE
    )
    first, second = plan.mails
    assert first.message_id == message_id("gw", "abc123", 41, DOMAIN)
    assert second.message_id == group_message_id("g", "alert", _ident(2), DOMAIN)
    assert second.in_reply_to == first.message_id


def test_a_taken_or_repeated_identity_falls_back_and_threads_follow() -> None:
    """A group Message-ID already in the outbox (taken) or already given in this pass makes
    the mail single mode; the thread's root is what the first mail really got."""
    same = _ident(1)
    taken = frozenset({group_message_id("g", "alert", same, DOMAIN)})
    ids = MailIds(first=41, instance="abc123", group="g", taken=taken)
    plan = decide(
        _backlog([_alert(1, same), _alert(2, same), _alert(3, _ident(3))], ids),
        200.0,
        DOMAIN,
        "gw",
        ONE_BY_ONE,
    )
    first, second, third = plan.mails
    assert first.message_id == message_id("gw", "abc123", 41, DOMAIN)
    assert second.message_id == message_id("gw", "abc123", 42, DOMAIN)
    assert third.message_id == group_message_id("g", "alert", _ident(3), DOMAIN)
    assert second.in_reply_to == third.in_reply_to == first.message_id
    (thread,) = plan.threads
    assert thread.root_message_id == first.message_id


def test_single_mode_ignores_identities() -> None:
    """Without a group the identity plays no part: Message-IDs as before."""
    ids = MailIds(first=41, instance="abc123")
    plan = decide(_backlog([_alert(1, _ident(1))], ids), 200.0, DOMAIN, "gw", ONE_BY_ONE)
    assert [m.message_id for m in plan.mails] == ["<faultmail.gw.abc123.41@ex.org>"]


def test_a_rotation_notice_is_named_after_the_device_and_the_spread() -> None:
    """A code-rotation security notice: notice identity of the device and the spread's start."""
    rules = GroupingRules(rotation_codes=5, security=("sec@example.com",))
    spread = CodeSpread(
        codes=6, first_at=50.0, last_at=90.0, messages=6, topic="d/rogue/f", examples=("A",)
    )
    backlog = Backlog(
        alerts=[_alert(1, _ident(1), uid="rogue")],
        threads={},
        suppressed={},
        ids=GROUP_IDS,
        code_spread={"rogue": spread},
    )
    plan = decide(backlog, 200.0, DOMAIN, "gw", rules)
    _, notice = plan.mails
    kind = MailKind.SECURITY_NOTICE.value
    assert (notice.kind, notice.id) == (MailKind.SECURITY_NOTICE, 42)
    assert notice.message_id == group_message_id(
        "g", kind, notice_identity("g", kind, "rogue", 50.0), DOMAIN
    )


def test_silence_notices_agree_across_members_and_differ_per_event_and_audience() -> None:
    """A silence's start and end notices are named after its scope and start (not its local
    id): two members agree; start, end, and each recipient set of the end differ."""
    rules = GroupingRules(silence_notify=("ops@example.com",))

    def silence(local_id: int) -> Silence:
        return Silence(local_id, "pump-*", "*", 1000.0, 2000.0, "tech", "service")

    held = {"id": 1, "uid": "pump-1", "code": "E1", "recipients": ("boss@example.com",)}
    held |= {"severity": "error", "fault_state": "resolved", "message": "m", "received_at": 1.0}

    def notices(local_id: int, ids: MailIds) -> list[str]:
        events = SilenceEvents(
            started=[silence(local_id)], ended=[EndedSilence(silence(local_id), [held], [])]
        )
        return [m.message_id for m in silence_notices(events, ids, 2000.0, DOMAIN, "gw", rules)]

    here = notices(3, GROUP_IDS)
    there = notices(8, MailIds(first=7, instance="def456", group="g"))
    assert here == there
    assert len(set(here)) == 3 and all(m.startswith("<faultmail.g.silence-notice.") for m in here)
    single = notices(3, MailIds(first=41, instance="abc123"))
    assert single == [message_id("gw", "abc123", n, DOMAIN) for n in (41, 42, 43)]
