"""Which alerts make which mail: one mail per problem, not one per message.

A pure function over the alerts not yet in a mail and the state of each device + code
"thread" (both as the outbox reads them); agent.planner turns its result into mails.
Rules (Alertmanager's group_wait / repeat_interval / send_resolved, adapted to alerts that
matter one by one):
- the first active alert of a device + code opens a thread and goes out at once;
- repeats within the repeat window are held, and go out together as one follow-up at the end
  of the window ("occurred 37 more times since 10:02"); then the window restarts;
- a repeat more severe than what was mailed goes out at once (escalation);
- a resolved alert goes out at once, in the thread, with what was held; the thread closes;
- a backlog of at least digest_threshold alerts (after an outage) becomes one digest mail per
  recipient set instead of hundreds of mails;
- a device budget (mail.device_budget mails per mail.device_window, across all its codes):
  a device whose mails of this pass would overspend it waits, all its alerts held, until
  none of its mails lies within the window; then they go out as usual if they fit the
  budget, else as one digest. A device rotating fault codes (a new thread per message)
  therefore causes at most `budget` mails per window, however many codes it invents.
A repeat window of 0 turns grouping off: every alert is its own mail.
An acknowledged thread (`acked`: someone said they have it) sends no follow-ups: its repeats
wait, and go out with its resolve or escalation, the mail marked as acknowledged; the ack
holds no longer after that mail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from agent.models import FaultState, MailKind
from agent.outbox import ThreadState, UnplannedAlert


@dataclass(frozen=True, slots=True)
class Plan:
    kind: MailKind
    alert_ids: tuple[int, ...]
    recipients: tuple[str, ...]
    severity_rank: int
    thread_key: str | None = None
    # The thread was acknowledged: this mail (a resolve or an escalation) says by whom.
    acknowledged: bool = False


@dataclass
class Planned:
    mails: list[Plan] = field(default_factory=list)
    threads: dict[str, ThreadState] = field(default_factory=dict)


def plan(
    unplanned: list[UnplannedAlert],
    threads: dict[str, ThreadState],
    now: float,
    *,
    repeat_window: float,
    digest_threshold: int,
    device_budget: int = 0,
    device_mails: dict[str, int] | None = None,
    acked: frozenset[str] = frozenset(),
) -> Planned:
    """Mails to create now; alerts not covered by any stay held for a later pass.

    device_mails: mails each device caused within the budget's window (before this pass).
    acked: keys of the open threads whose acknowledgement holds.
    """
    normal = _per_problem(unplanned, threads, now, repeat_window, acked)
    waiting: set[str] = set()
    over: set[str] = set()
    if device_budget > 0:
        normal, waiting, over = _within_budget(normal, unplanned, device_budget, device_mails or {})
    # Held repeats are already grouped; what counts is how many mails would go out now.
    if len(normal.mails) >= digest_threshold:
        return _digest([a for a in unplanned if a.uid not in waiting], threads, now, repeat_window)
    if over:
        spent = _digest([a for a in unplanned if a.uid in over], threads, now, repeat_window)
        normal.mails += spent.mails
        normal.threads.update(spent.threads)
    return normal


def _within_budget(
    normal: Planned, unplanned: list[UnplannedAlert], budget: int, used: dict[str, int]
) -> tuple[Planned, set[str], set[str]]:
    """Apply the device budget to a per-problem plan.

    Returns the plan of the devices that stay within it, the devices whose alerts wait (they
    would overspend while the window still holds a mail of theirs), and the devices that
    overspend with no mail in the window (one digest for them). Thread keys belong to one
    device, so leaving out a device's mails and threads together keeps the others' plan as
    it was.
    """
    uid_of = {a.key: a.uid for a in unplanned}
    count: dict[str, int] = {}
    for mail in normal.mails:
        if mail.thread_key is not None:
            uid = uid_of[mail.thread_key]
            count[uid] = count.get(uid, 0) + 1
    over = {uid for uid, n in count.items() if used.get(uid, 0) + n > budget}
    if not over:
        return normal, set(), set()
    kept = Planned(
        mails=[m for m in normal.mails if m.thread_key is None or uid_of[m.thread_key] not in over],
        threads={k: t for k, t in normal.threads.items() if uid_of.get(k) not in over},
    )
    fresh = {uid for uid in over if used.get(uid, 0) == 0}
    return kept, over - fresh, fresh


def _per_problem(
    unplanned: list[UnplannedAlert],
    threads: dict[str, ThreadState],
    now: float,
    repeat_window: float,
    acked: frozenset[str] = frozenset(),
) -> Planned:
    out = Planned()
    by_key: dict[str, list[UnplannedAlert]] = {}
    for alert in unplanned:
        by_key.setdefault(alert.key, []).append(alert)
    for key, alerts in by_key.items():
        thread = threads.get(key)
        # A window that already ended at the start of this pass releases every repeat that
        # waited for it, as one follow-up.
        releasing = thread is not None and thread.is_open and not _window_active(thread, now)
        held: list[UnplannedAlert] = []
        ack = key in acked and thread is not None and thread.is_open
        for alert in alerts:
            if alert.fault_state is FaultState.RESOLVED:
                out.mails.append(_mail(MailKind.RESOLVED, [*held, alert], key, ack))
                held = []
                ack = False
                base = thread or _new_thread(key, alert, now, repeat_window)
                thread = replace(base, is_open=False, window_until=None)
                releasing = False
            elif thread is None or not thread.is_open:
                out.mails.append(_mail(MailKind.ALERT, [alert], key))
                thread = _new_thread(key, alert, now, repeat_window, root=thread)
                releasing = False
            elif alert.severity.rank < thread.severity_rank:
                out.mails.append(_mail(MailKind.ALERT, [*held, alert], key, ack))
                held = []
                ack = False
                thread = replace(
                    thread, severity_rank=alert.severity.rank, window_until=now + repeat_window
                )
                # The escalation opened a window of its own: what follows waits for it.
                releasing = False
            elif ack:
                # Acknowledged: repeats wait for the resolve or an escalation.
                held.append(alert)
            elif repeat_window <= 0:
                # Grouping off: every repeat is its own mail (still in the thread).
                out.mails.append(_mail(MailKind.ALERT, [alert], key))
            else:
                held.append(alert)
        if ack and thread is not None and thread.is_open:
            # No window to wait for: nothing is released until the thread resolves or
            # escalates (and the queue's next due time does not point at this thread).
            thread = replace(thread, window_until=None)
        elif held and releasing and thread is not None:
            out.mails.append(_mail(MailKind.FOLLOWUP, held, key))
            thread = replace(thread, window_until=now + repeat_window)
        elif thread is not None and thread.is_open and not held and releasing:
            thread = replace(thread, window_until=None)
        if thread is not None:
            out.threads[key] = thread
    return out


def _window_active(thread: ThreadState, now: float) -> bool:
    return thread.window_until is not None and now < thread.window_until


def _new_thread(
    key: str, alert: UnplannedAlert, now: float, window: float, root: ThreadState | None = None
) -> ThreadState:
    # A closed thread that opens again keeps its root, so a recurring problem stays one
    # conversation in the mail client.
    return ThreadState(
        key=key,
        opened_at=alert.received_at,
        is_open=True,
        window_until=now + window,
        severity_rank=alert.severity.rank,
        root_message_id=root.root_message_id if root is not None else None,
    )


def _mail(
    kind: MailKind, alerts: Iterable[UnplannedAlert], key: str | None, acknowledged: bool = False
) -> Plan:
    covered = list(alerts)
    return Plan(
        kind=kind,
        alert_ids=tuple(a.id for a in covered),
        recipients=covered[-1].recipients,
        severity_rank=min(a.severity.rank for a in covered),
        thread_key=key,
        acknowledged=acknowledged,
    )


def _digest(
    unplanned: list[UnplannedAlert], threads: dict[str, ThreadState], now: float, window: float
) -> Planned:
    out = Planned()
    by_recipients: dict[tuple[str, ...], list[UnplannedAlert]] = {}
    for alert in unplanned:
        by_recipients.setdefault(alert.recipients, []).append(alert)
    for alerts in by_recipients.values():
        out.mails.append(_mail(MailKind.DIGEST, alerts, None))
    # The digest told everyone: each problem's thread now exists (or is closed by a resolve),
    # so repeats that follow are held instead of mailed one by one.
    for alert in unplanned:
        thread = out.threads.get(alert.key) or threads.get(alert.key)
        if alert.fault_state is FaultState.RESOLVED:
            if thread is not None:
                out.threads[alert.key] = replace(thread, is_open=False, window_until=None)
        elif thread is None or not thread.is_open:
            out.threads[alert.key] = _new_thread(alert.key, alert, now, window, root=thread)
    return out
