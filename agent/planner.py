"""Delivery decisions, made outside storage: which mails the waiting alerts become (grouping),
each mail's Message-ID, the thread it answers, the suppressed count it reports, and the
notices a blocked device gets. The outbox reads what a decision needs and stores the result.

The Message-ID is fixed here, before the first attempt, so a crash between the relay's 250
and our commit gives a duplicate with the same ID (recognisable) rather than a new mail.
In group mode it is made from what the mail is about (agent.identity), so every member gives
the same alert's mail the same Message-ID; single mode keeps the per-database one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from agent import grouping
from agent.identity import notice_identity, pick_message_id
from agent.models import BlockEvent, MailKind, Severity
from agent.outbox import Ack, AckStore, Backlog, MailIds, MailPlan, NewMail, PlanStore, SilenceStore
from agent.outbox.backlog import ROTATION_CAUSE, CodeSpread
from agent.outbox.silences import SilenceEvents
from agent.silences import Silence, Window, summarise

# A device caught rotating fault codes is named in a security notice at most this often.
ROTATION_NOTICE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class GroupingRules:
    repeat_window: float = 0.0
    # 10**9: no digests unless asked for.
    digest_threshold: int = 10**9
    # Mails per device within device_window, across its codes (0: no budget).
    device_budget: int = 0
    device_window: float = 300.0
    # Distinct codes from one device within device_window that are code rotation (0: off).
    rotation_codes: int = 0
    # Who hears of code rotation: the security team (flood.notify).
    security: tuple[str, ...] = ()
    # Who hears that a silence began or ended: every route's recipients (one set).
    silence_notify: tuple[str, ...] = ()
    # Recurring maintenance windows ([[maintenance]]): stored as silences when they come.
    maintenance: tuple[Window, ...] = ()

    @property
    def per_device(self) -> bool:
        """Whether planning needs what each device caused within the device window."""
        return self.device_budget > 0 or self.rotation_codes > 0


@dataclass(frozen=True, slots=True)
class BlockNotice:
    """A block to persist, and who hears of it: the security team and operations."""

    event: BlockEvent
    security: tuple[str, ...]
    operations: tuple[str, ...]
    gateway_id: str
    domain: str

    def notice_mails(self, ids: MailIds) -> list[NewMail]:
        """One critical notice mail per audience that has recipients, due at once."""
        event = self.event
        body = {
            "cause": event.cause,
            "blocked": event.blocked,
            "uid": event.uid,
            "topic": event.topic,
            "started_at": event.started_at,
            "blocked_at": event.blocked_at,
            "rate_per_s": event.rate_per_s,
            "count": event.count,
            "samples": list(event.samples),
            "reason": event.reason,
        }
        mails: list[NewMail] = []
        used: set[str] = set()
        audiences = [(MailKind.SECURITY_NOTICE, self.security)]
        if event.blocked:
            # Operations hear of a block (their alerts stop); a watched device still mails.
            audiences.append((MailKind.BLOCK_NOTICE, self.operations))
        for kind, recipients in audiences:
            if recipients:
                mail_id = ids.first + len(mails)
                identity = notice_identity(ids.group or "", kind.value, event.uid, event.started_at)
                this_id = pick_message_id(
                    ids, used, kind, identity, mail_id, self.domain, self.gateway_id
                )
                mails.append(
                    NewMail(
                        id=mail_id,
                        message_id=this_id,
                        kind=kind,
                        recipients=tuple(recipients),
                        severity_rank=Severity.CRITICAL.rank,
                        created_at=event.blocked_at,
                        notice=body,
                    )
                )
        return mails


def holding_acks(backlog: Backlog, acks: dict[str, Ack]) -> dict[str, Ack]:
    """The acks that still hold: their thread is open, was opened before the ack and has not
    escalated above the severity it had when acknowledged."""
    out: dict[str, Ack] = {}
    for key, ack in acks.items():
        thread = backlog.threads.get(key)
        if (
            thread is not None
            and thread.is_open
            and thread.opened_at <= ack.acked_at
            and thread.severity_rank >= ack.severity_rank
        ):
            out[key] = ack
    return out


def decide(
    backlog: Backlog,
    now: float,
    domain: str,
    gateway_id: str,
    rules: GroupingRules,
    acks: dict[str, Ack] | None = None,
) -> MailPlan:
    """The mails to create now for the waiting alerts, with their final identities.

    A device + code's thread keeps the Message-ID of its first mail for In-Reply-To /
    References; the first mail of a device in this pass reports what the rate limit
    suppressed since its previous mail. An acknowledged thread's resolve or escalation
    carries the ack (notice "acknowledged": by, at, note).
    """
    holding = holding_acks(backlog, acks or {})
    planned = grouping.plan(
        backlog.alerts,
        backlog.threads,
        now,
        repeat_window=rules.repeat_window,
        digest_threshold=rules.digest_threshold,
        device_budget=rules.device_budget,
        device_mails=backlog.device_mails,
        acked=frozenset(holding),
    )
    uid_of = {a.key: a.uid for a in backlog.alerts}
    identity_of = {a.id: a.identity for a in backlog.alerts}
    unreported = dict(backlog.suppressed)
    roots: dict[str, str] = {}
    used: set[str] = set()
    out = MailPlan()
    for n, mail in enumerate(planned.mails):
        mail_id = backlog.ids.first + n
        # A mail is named after its first alert (the lowest id): the same on every member
        # that plans the same alerts, whatever order grouping listed them in.
        first_alert = min(mail.alert_ids, default=None)
        identity = identity_of.get(first_alert) if first_alert is not None else None
        this_id = pick_message_id(
            backlog.ids, used, mail.kind, identity, mail_id, domain, gateway_id
        )
        key = mail.thread_key
        suppressed = 0
        root = None
        if key is not None:  # digests have no thread
            # Every mail with a thread key has its thread in the plan.
            thread = planned.threads.get(key)
            root = roots.get(key) or (thread.root_message_id if thread else None)
            if root is None:
                roots[key] = this_id
            uid = uid_of[key]
            if uid in unreported:
                suppressed = unreported.pop(uid)
                out.reported.add(uid)
        out.mails.append(
            NewMail(
                id=mail_id,
                message_id=this_id,
                kind=mail.kind,
                recipients=mail.recipients,
                severity_rank=mail.severity_rank,
                created_at=now,
                alert_ids=mail.alert_ids,
                thread_key=key,
                in_reply_to=root,
                suppressed_before=suppressed,
                notice=(
                    {"acknowledged": holding[key].as_notice()}
                    if mail.acknowledged and key in holding
                    else None
                ),
            )
        )
    out.threads = [
        dataclasses.replace(thread, root_message_id=roots.get(key) or thread.root_message_id)
        for key, thread in planned.threads.items()
    ]
    for uid, spread in sorted(backlog.code_spread.items()):
        if rules.rotation_codes <= 0 or spread.codes < rules.rotation_codes:
            continue
        if uid in backlog.rotation_noticed:
            continue
        out.suspicious.add(uid)
        notice = BlockNotice(
            event=rotation_event(uid, spread, now, rules),
            security=rules.security,
            operations=(),
            gateway_id=gateway_id,
            domain=domain,
        )
        ids = dataclasses.replace(
            backlog.ids, first=backlog.ids.first + len(out.mails), taken=backlog.ids.taken | used
        )
        notices = notice.notice_mails(ids)
        used.update(m.message_id for m in notices)
        out.mails += notices
    return out


def rotation_event(uid: str, spread: CodeSpread, now: float, rules: GroupingRules) -> BlockEvent:
    """What the security team reads of a device rotating fault codes (it is not blocked)."""
    span = max(spread.last_at - spread.first_at, 1e-3)
    return BlockEvent(
        uid=uid,
        topic=spread.topic,
        started_at=spread.first_at,
        blocked_at=now,
        rate_per_s=round(spread.messages / span, 2),
        count=spread.messages,
        samples=spread.examples,
        reason=f"code rotation: {spread.codes} distinct fault codes within "
        f"{rules.device_window:g} s (limit {rules.rotation_codes}); not blocked, its mails "
        f"are held to {rules.device_budget} per {rules.device_window:g} s, the rest in digests",
        blocked=False,
        cause=ROTATION_CAUSE,
    )


def plan_mails(
    outbox: PlanStore,
    now: float,
    domain: str,
    gateway_id: str,
    rules: GroupingRules | None = None,
    *,
    critical_first: bool = False,
) -> int:
    """Turn the alerts that have no mail yet into mails, as decided here; return how many.

    The outbox reads the waiting alerts, calls `decide` and stores the plan, in one
    transaction.

    critical_first: plan only the devices with a critical alert waiting, if there are any
    (see `critical_devices`); the caller plans the rest in its next pass.
    """
    chosen = rules or GroupingRules()
    notices = 0
    if isinstance(outbox, SilenceStore):
        if chosen.maintenance:
            outbox.sync_maintenance(now, chosen.maintenance)
        notices = outbox.silence_pass(
            now, lambda events, ids: silence_notices(events, ids, now, domain, gateway_id, chosen)
        )
    devices = critical_devices(outbox, chosen) if critical_first else None
    return notices + plan_alerts(outbox, now, domain, gateway_id, chosen, devices)


def plan_alerts(
    outbox: PlanStore,
    now: float,
    domain: str,
    gateway_id: str,
    chosen: GroupingRules,
    devices: frozenset[str] | None = None,
) -> int:
    """The alerts part of `plan_mails`, for `devices` (None: every device)."""
    made = outbox.plan(
        # The acks are read inside the plan's transaction (one connection): an ack stored
        # meanwhile is seen by this pass or the next, never half.
        lambda backlog: decide(
            backlog,
            now,
            domain,
            gateway_id,
            chosen,
            outbox.acks() if isinstance(outbox, AckStore) else None,
        ),
        now=now,
        device_window=chosen.device_window if chosen.per_device else 0.0,
        notice_horizon=max(ROTATION_NOTICE_EVERY_S, chosen.device_window),
        devices=devices,
    )
    if made and isinstance(outbox, AckStore):
        # The acks whose resolve or escalation was just planned hold no longer.
        outbox.clear_acks(now)
    return made


def critical_devices(outbox: PlanStore, rules: GroupingRules) -> frozenset[str] | None:
    """The devices a pass woken for a critical alert plans alone: those with a critical alert
    waiting. In a storm thousands of other alerts wait too, and planning them all first kept
    the critical from the relay for up to half a second.

    The decisions are per device (threads, budgets, code rotation, suppressed counts, acks),
    so planning these devices now and the others a moment later gives the mails planning all
    at once would, as if the others had arrived later, with two exceptions across devices:
    - the digest threshold: when that many alerts wait, the backlog may become one digest, so
      it is planned whole (None), as is one with no critical alert;
    - the devices over their budget in one pass share a digest per recipient set: a critical
      device's goes out apart from the others', which is what it is there for.
    """
    waiting, devices = outbox.unplanned_critical()
    if not devices or waiting >= rules.digest_threshold:
        return None
    return devices


def silence_notices(
    events: SilenceEvents,
    ids: MailIds,
    now: float,
    domain: str,
    gateway_id: str,
    rules: GroupingRules,
) -> list[NewMail]:
    """One notice to the routes' recipients for each silence that began; for each that ended,
    one mail per recipient set (the routes' recipients and every set its alerts had) with the
    end notice and what happened during it for that set."""
    mails: list[NewMail] = []
    used: set[str] = set()

    def add(
        silence: Silence, event: str, recipients: tuple[str, ...], body: dict[str, object]
    ) -> None:
        if not recipients:
            return
        mail_id = ids.first + len(mails)
        identity = _silence_identity(ids.group, silence, event, recipients)
        mails.append(
            NewMail(
                id=mail_id,
                message_id=pick_message_id(
                    ids, used, MailKind.SILENCE_NOTICE, identity, mail_id, domain, gateway_id
                ),
                kind=MailKind.SILENCE_NOTICE,
                recipients=recipients,
                severity_rank=Severity.ERROR.rank,
                created_at=now,
                notice=body,
            )
        )

    for silence in events.started:
        add(silence, "started", rules.silence_notify, _silence_body(silence, "started"))
    for ended in events.ended:
        sets: dict[tuple[str, ...], list[dict[str, object]]] = {rules.silence_notify: []}
        for alert in ended.alerts:
            sets.setdefault(tuple(alert["recipients"]), []).append(alert)
        active = set(ended.still_active)
        for recipients, alerts in sets.items():
            body = _silence_body(ended.silence, "ended")
            body["summary"] = summarise(alerts)
            body["still_active"] = [
                f"{a['uid']} {a['code']} (alert {a['id']})" for a in alerts if a["id"] in active
            ]
            add(ended.silence, "ended", recipients, body)
    return mails


def _silence_identity(
    group: str | None, silence: Silence, event: str, recipients: tuple[str, ...]
) -> str | None:
    """A silence notice's identity in group mode: which silence (its patterns and start, not
    the database's id, so members given the same [[maintenance]] window agree), whether it
    began or ended, and for whom (an end makes one notice per recipient set)."""
    if group is None:
        return None
    about = json.dumps([event, silence.device, silence.code, list(recipients)])
    return notice_identity(group, MailKind.SILENCE_NOTICE.value, about, silence.starts_at)


def _silence_body(silence: Silence, event: str) -> dict[str, object]:
    return {
        "event": event,
        "silence_id": silence.id,
        "scope": silence.scope,
        "device": silence.device,
        "code": silence.code,
        "author": silence.author,
        "reason": silence.reason,
        "starts_at": silence.starts_at,
        "ends_at": silence.ends_at,
        "ended_at": silence.ended_at,
        "ended_by": silence.ended_by,
    }
