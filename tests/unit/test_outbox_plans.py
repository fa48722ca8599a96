"""outbox.plans: what a planning pass reads and that its plan is stored whole or not at all."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.models import DeviceDelta, FaultState, MailKind, Severity
from agent.outbox import Backlog, MailPlan, Outbox
from agent.outbox.backlog import ThreadState
from agent.outbox.plans import NewMail
from agent.planner import GroupingRules, plan_mails
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


# ---- a pass woken for a critical alert plans its devices first (issue 18: the storm) --------

_DEVICES = ("pump-1", "pump-2", "pump-3")
_ALERT = st.tuples(
    st.sampled_from(_DEVICES),
    st.sampled_from(("E1", "E2")),
    st.sampled_from((Severity.CRITICAL, Severity.ERROR, Severity.WARNING)),
    st.sampled_from((FaultState.ACTIVE, FaultState.ACTIVE, FaultState.RESOLVED)),
)
_RULES = st.builds(
    GroupingRules,
    repeat_window=st.sampled_from((0.0, 600.0)),
    digest_threshold=st.sampled_from((10**9, 3, 8)),
    device_budget=st.sampled_from((0, 2)),
    device_window=st.just(300.0),
    rotation_codes=st.sampled_from((0, 2)),
    security=st.just(("security@example.com",)),
)


def _planned(path: Path) -> list[tuple[Any, ...]]:
    """Every mail, as what it carries per device: its kind, that device's alerts in it, its
    thread, the suppressed count it reports, and its thread root named by the root mail's
    alerts (mail ids and Message-IDs depend on the order mails were planned in). A digest of
    several devices over budget counts once per device, without the severity the other
    devices' alerts may have lowered (see planner.critical_devices)."""
    db = sqlite3.connect(path)
    rows = db.execute(
        "SELECT m.id, m.message_id, m.kind, m.severity_rank, m.thread_key, m.in_reply_to, "
        "m.suppressed_before, json_extract(m.notice, '$.uid'), "
        "json_group_array(a.uid), json_group_array(a.id) "
        "FROM mails m LEFT JOIN alerts a ON a.mail_id = m.id GROUP BY m.id ORDER BY m.id"
    ).fetchall()
    db.close()
    by_message_id = {r[1]: tuple(sorted(json.loads(r[9]))) for r in rows}
    out = []
    for _, _, kind, rank, key, reply_to, suppressed, notice_uid, uids, ids in rows:
        carried: dict[str | None, list[int]] = {}
        for uid, alert_id in zip(json.loads(uids), json.loads(ids), strict=True):
            carried.setdefault(uid, []).append(alert_id)
        # A digest's severity is that of the devices that shared it.
        shared = kind == MailKind.DIGEST.value or len(carried) > 1
        for uid, alert_ids in carried.items():
            out.append(
                (
                    uid or notice_uid,
                    kind,
                    None if shared else rank,
                    tuple(sorted(i for i in alert_ids if i is not None)),
                    key,
                    by_message_id.get(reply_to, reply_to),
                    suppressed,
                )
            )
    return sorted(out, key=repr)


_OVER_BUDGET = [("pump-1", "E1", Severity.CRITICAL, FaultState.ACTIVE)] * 3 + [
    ("pump-2", "E1", Severity.ERROR, FaultState.ACTIVE)
] * 3


@settings(max_examples=120, deadline=None)
@example(  # two devices over budget: one shared digest when planned together, two apart
    before=[],
    after=_OVER_BUDGET,
    rules=GroupingRules(device_budget=2, security=("security@example.com",)),
)
@given(
    before=st.lists(_ALERT, max_size=8),
    after=st.lists(_ALERT, min_size=1, max_size=14),
    rules=_RULES,
)
def test_planning_critical_devices_first_gives_the_mails_planning_all_at_once_gives(
    before: list[tuple[str, str, Severity, FaultState]],
    after: list[tuple[str, str, Severity, FaultState]],
    rules: GroupingRules,
) -> None:
    """A pass woken for a critical alert plans only the devices with one waiting, and the next
    pass the rest: each device's mails are the ones a single pass would have made (threads,
    repeats held, escalations, resolves, budgets, code rotation notices, suppressed counts),
    and a backlog that may become a digest is planned whole."""

    def run(tmp: Path, split: bool) -> list[tuple[Any, ...]]:
        box = Outbox(tmp / ("split.db" if split else "whole.db"))
        box.ingest(
            [], [DeviceDelta("pump-2", "devices/pump-2/fault", 1.0, received=3, suppressed=3)]
        )
        seq = 0

        def store(alerts: list[tuple[str, str, Severity, FaultState]], at: float) -> None:
            nonlocal seq
            for uid, code, severity, state in alerts:
                seq += 1
                box.ingest(
                    [
                        pending_decision(
                            seq, uid=uid, code=code, severity=severity, state=state, at=at + seq
                        )
                    ]
                )

        store(before, 100.0)
        plan_mails(box, 200.0, "example.com", "gw", rules)
        store(after, 300.0)
        if split:
            plan_mails(box, 500.0, "example.com", "gw", rules, critical_first=True)
        plan_mails(box, 500.0, "example.com", "gw", rules)
        box.close()
        return _planned(box.path)

    with tempfile.TemporaryDirectory() as tmp:
        assert run(Path(tmp), split=True) == run(Path(tmp), split=False)


def test_a_critical_devices_pass_leaves_the_other_devices_waiting(outbox: Outbox) -> None:
    """Planned critical-first, the critical alert's device gets its mails (all of its waiting
    alerts, in order) and the other devices' alerts wait; with no critical alert waiting, or
    as many alerts waiting as make a digest, the pass plans them all."""
    outbox.ingest(
        [pending_decision(1, uid="pump-1", code="E1"), pending_decision(2, uid="pump-2", code="E1")]
    )
    assert plan_mails(outbox, 10.0, "example.com", "gw", critical_first=True) == 2

    outbox.ingest(
        [
            pending_decision(3, uid="pump-1", code="E2"),
            pending_decision(4, uid="pump-2", code="E2"),
            pending_decision(5, uid="pump-2", code="C9", severity=Severity.CRITICAL),
            pending_decision(6, uid="pump-3", code="E1"),
        ]
    )
    assert outbox.unplanned_critical() == (4, frozenset({"pump-2"}))
    assert plan_mails(outbox, 20.0, "example.com", "gw", critical_first=True) == 2
    assert outbox.unplanned_critical() == (2, frozenset())
    mails = outbox.claim_due(20.0, 10, critical_only=True)
    assert [(m.alerts[0].uid, m.alerts[0].code) for m in mails] == [("pump-2", "C9")]
    assert plan_mails(outbox, 20.0, "example.com", "gw") == 2

    outbox.ingest(
        [
            pending_decision(7, uid="pump-1", code="E3"),
            pending_decision(8, uid="pump-3", code="C9", severity=Severity.CRITICAL),
        ]
    )
    digests = GroupingRules(repeat_window=600.0, digest_threshold=2)
    assert plan_mails(outbox, 30.0, "example.com", "gw", digests, critical_first=True) == 1
    assert outbox.unplanned_critical() == (0, frozenset())
