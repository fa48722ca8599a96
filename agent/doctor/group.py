"""The group checks ([cluster] mode "shared" or "standby", issue 17): does the broker offer
shared subscriptions, which members it knows and in what state, who holds the standby lease,
and whether another member already uses this gateway's instance name.

What the members say about themselves is read where they publish it, by a throw-away session
(agent.doctor.group_probe, which files it as `Seen`). The verdicts (`verdicts`) are pure
functions of what was seen and what this gateway knows of itself (`Local`); `group_checks`
gathers both.
"""

from __future__ import annotations

import math
import ssl
import time
from dataclasses import dataclass

from agent.cli.common import iso
from agent.cli.reports import GroupFileError, daemon_running, group_file, read_group_file
from agent.doctor.broker import Probe
from agent.doctor.group_probe import MemberStatus, Seen, lease_topic, observe, status_topic
from agent.doctor.result import Check, Group, Status, fail, ok, warn
from agent.errors import OutboxError
from agent.settings import Settings
from agent.tls import tls_context

# MQTT 5 SUBACK reason 0x9E: Shared Subscriptions not supported.
_SHARED_NOT_SUPPORTED = 0x9E

SHARE_FIX = 'use a broker with MQTT 5 shared subscriptions or set cluster.mode = "standby"'


@dataclass(frozen=True, slots=True)
class Local:
    """What this gateway knows of itself."""

    group: str
    instance: str
    mode: str
    broker: str  # host and port, for the mosquitto_pub lines in fixes
    daemon_pid: int | None  # the running daemon's pid, None when it does not run
    own_since: float | None = None  # when our daemon's status went online (its group.json)


def group_checks(settings: Settings, timeout: float, broker: Group) -> Group:
    """The group lines, after the broker family (whose result is `broker`): one OK line in
    single mode; one WARN when the broker checks failed (nothing to talk to)."""
    cluster = settings.cluster
    if not cluster.grouped:
        return Group([ok("group", 'single mode (cluster.mode = "single"): no group to check')])
    if any(c.status is Status.FAIL for c in broker.checks):
        return Group(
            [
                warn(
                    "group",
                    f"group {cluster.group} not checked: the broker checks above failed",
                    "fix the broker first, then run `faultmail doctor` again",
                )
            ]
        )
    s = settings.mqtt
    context: ssl.SSLContext | None = (
        tls_context(s.ca_file, s.client_cert, s.client_key) if s.tls else None
    )
    client_id = f"faultmail-{cluster.group}-{cluster.instance}-doctor"
    with Probe(settings, client_id, timeout, context) as probe:
        login = probe.login("group")
        if login.status is not Status.OK:
            return Group([login])
        seen = observe(probe, cluster.group, s.protocol)
    return Group(verdicts(local_facts(settings), seen))


def local_facts(settings: Settings) -> Local:
    """Whether this gateway's daemon runs (its heartbeat, as `faultmail status` reads it) and
    when its status went online (its group.json)."""
    from agent.outbox import Outbox  # as the CLI does: only the commands that need it pay

    cluster = settings.cluster
    pid = None
    try:
        outbox = Outbox(settings.outbox_path, readonly=True)
        try:
            beat = outbox.heartbeat()
        finally:
            outbox.close()
    except OutboxError:
        beat = None  # no database yet: the daemon never ran here
    if daemon_running(beat, time.time(), settings.health.interval) and beat is not None:
        pid = int(beat["pid"])
    own_since = None
    try:
        own = read_group_file(group_file(settings))["members"].get(cluster.instance)
        own_since = own["since"] if own else None
    except GroupFileError:
        pass
    return Local(
        cluster.group,
        cluster.instance,
        cluster.mode,
        f"{settings.mqtt.host} -p {settings.mqtt.port}",
        pid,
        own_since,
    )


def verdicts(local: Local, seen: Seen) -> list[Check]:
    """shared subscriptions, members, the lease (standby only), this instance name."""
    checks = [share_check(local, seen), members_check(local, seen)]
    if local.mode == "standby":
        checks.append(lease_check(local, seen))
    checks.append(instance_check(local, seen))
    return checks


def share_check(local: Local, seen: Seen) -> Check:
    """Shared mode needs shared subscriptions: the MQTT 5 CONNACK flag (absent means
    available) and a SUBACK granting a $share/ filter. Standby mode only reports it."""
    name = "group shared subscriptions"
    reply = seen.share_reply
    refused = reply is None or reply.is_failure
    if seen.share_flag == 0:
        seen_text = "the broker's CONNACK says Shared Subscription Available = 0"
    elif reply is None:
        seen_text = f"no SUBACK to {seen.share_filter}"
    elif reply.is_failure:
        seen_text = f"the broker refused {seen.share_filter} ({reply})"
    elif seen.protocol == "5":
        seen_text = f"offered (CONNACK flag absent or 1; {seen.share_filter} granted)"
    else:
        seen_text = f"offered ({seen.share_filter} granted; MQTT 3.1.1 has no flag for it)"
    if local.mode != "shared":
        unusable = seen.share_flag == 0 or refused
        note = 'not needed in mode "standby"'
        return ok(name, f"{note}; {'unavailable: ' if unusable else ''}{seen_text}")
    if seen.share_flag == 0 or (reply is not None and reply.value == _SHARED_NOT_SUPPORTED):
        return fail(
            name,
            f"{seen_text}: the members of a shared group cannot split the alerts",
            SHARE_FIX,
        )
    if refused:
        return fail(
            name,
            f"{seen_text}: the members of a shared group cannot split the alerts",
            "allow this gateway's MQTT user to subscribe to "
            f"$share/{local.group}/<each mqtt.topics filter> and to faultmail/{local.group}/# in "
            "the broker's ACL; "
            f"otherwise {SHARE_FIX}",
        )
    return ok(name, seen_text)


def _member_text(member: MemberStatus) -> str:
    if member.state == "unreadable":
        return f"{member.instance} unreadable ({member.problem})"
    details = [d for d in (member.role, member.since and f"since {iso(member.since)}") if d]
    return f"{member.instance} {member.state}" + (f" ({', '.join(details)})" if details else "")


def _clear_command(local: Local, topic: str) -> str:
    return f"mosquitto_pub -h {local.broker} -t {topic} -r -n"


def members_check(local: Local, seen: Seen) -> Check:
    """Every member's state and role; offline members, a member in another mode and
    unreadable status topics are WARNs, a refused read a FAIL."""
    name = "group members"
    group = local.group
    acl_fix = (
        f"allow this gateway's MQTT user to read and write faultmail/{group}/# in the broker's "
        "ACL (every member needs it)"
    )
    if seen.read_refused:
        return fail(name, f"the broker refused: {', '.join(seen.read_refused)}", acl_fix)
    if not seen.members:
        return warn(
            name,
            f"no member status under faultmail/{group}/: no daemon of group {group} has "
            "connected to this broker",
            f'start faultmail on the members (cluster.group = "{group}" on each) and check that '
            "they reach this broker",
        )
    members = [seen.members[k] for k in sorted(seen.members)]
    online = [m for m in members if m.state == "online"]
    listing = f"{len(online)} of {len(members)} online: " + ", ".join(map(_member_text, members))
    fixes: list[str] = []
    offline = [m.instance for m in members if m.state == "offline"]
    if offline:
        names = ", ".join(offline)
        fixes.append(
            f"start faultmail on {names} (a survivor adopts what a member held after "
            f"cluster.takeover_after); for a member taken out of service, clear its status: "
            + "; ".join(_clear_command(local, status_topic(group, m)) for m in offline)
        )
    strangers = [m for m in online if m.mode and m.mode != local.mode]
    if strangers:
        fixes.append(
            f"set the same cluster.mode on every member of {group} (this gateway: "
            f"{local.mode}; {', '.join(f'{m.instance}: {m.mode}' for m in strangers)})"
        )
    unreadable = [m.instance for m in members if m.state == "unreadable"]
    if unreadable:
        topics = ", ".join(status_topic(group, m) for m in unreadable)
        fixes.append(
            f"something other than faultmail writes {topics}: find the client in the broker's "
            "log and stop it, then clear the topic"
        )
    if not online:
        fixes.insert(0, "no member is online: alerts wait at the broker")
    if fixes:
        return warn(name, listing, "; ".join(fixes))
    return ok(name, listing)


def lease_check(local: Local, seen: Seen) -> Check:
    """Standby mode: someone holds the lease, and its holder is online."""
    name = "group lease"
    lease = lease_topic(local.group)
    clear = _clear_command(local, lease)
    if seen.lease.problem:
        return warn(
            name,
            f"{lease} holds something unreadable: {seen.lease.problem}",
            f"clear it ({clear}); a standby member then claims the lease",
        )
    holder = seen.lease.holder
    if holder is None:
        return warn(
            name,
            f"no active member: nobody holds {lease}, so no member takes alerts from the broker "
            "(they wait there)",
            "start faultmail on a member (a standby claims the lease within "
            "cluster.lease_settle); if they run, see `journalctl -u faultmail` on each",
        )
    member = seen.members.get(holder)
    since = f", since {iso(seen.lease.since)}" if seen.lease.since else ""
    if member is None or member.state == "unreadable":
        return warn(
            name,
            f"held by {holder}{since}, whose status topic is "
            f"{'unreadable' if member else 'missing'}",
            f"check that faultmail runs on {holder}; if no such member exists, clear the lease "
            f"({clear})",
        )
    if member.state == "offline":
        return fail(
            name,
            f"held by {holder}{since}, whose status is offline: while the lease stays, no "
            "standby takes over (its Last Will should have cleared it)",
            f"start faultmail on {holder}, or clear the stale lease so a standby takes over "
            f"({clear})",
        )
    return ok(name, f"held by {holder}{since} (online, {member.role or 'role unknown'})")


def instance_check(local: Local, seen: Seen) -> Check:
    """Is our instance name someone else's? Its status online while our daemon is not
    running means another member uses it; online while it runs is (most likely) us."""
    name = "group instance"
    instance = local.instance
    topic = status_topic(local.group, instance)
    member = seen.members.get(instance)
    state = member.state if member else "missing"
    rename_fix = (
        "give every member its own cluster.instance (default: gateway.id); this gateway is "
        f"{instance}"
    )
    if local.daemon_pid is None:
        if state == "online":
            return warn(
                name,
                f"{topic} says online but the daemon on this gateway is not running: another "
                f"member uses instance {instance} (or this gateway's daemon died less than "
                "1.5 x mqtt.keepalive ago)",
                rename_fix,
            )
        return ok(name, f"{instance} is not in use by another member ({state})")
    if state != "online":
        return warn(
            name,
            f"the daemon on this gateway runs (pid {local.daemon_pid}) but {topic} is {state}: "
            "its group connection to the broker is down",
            f"see `journalctl -u faultmail` (client id faultmail-{local.group}-{instance}-ctl) "
            "and the broker's log",
        )
    assert member is not None  # state is "online"
    if member.pid is not None:
        if member.pid == local.daemon_pid:
            return ok(name, f"{instance} online: this gateway (pid {member.pid})")
        return warn(
            name,
            f"{topic} names pid {member.pid}, this gateway's daemon is pid {local.daemon_pid}: "
            f"another member uses instance {instance}",
            rename_fix,
        )
    if (
        member.since is not None
        and local.own_since is not None
        and math.isclose(member.since, local.own_since, abs_tol=0.001)
    ):
        return ok(name, f"{instance} online: this gateway (since {iso(member.since)})")
    return ok(name, f"{instance} online (this gateway?)")
