"""One identity per alert across a group of gateways, and the Message-IDs: made from it in a
group, unique per database file otherwise.

Every member of a group that handles the same device message (a duplicate after a takeover,
a split brain, a held record adopted from a dead member) computes the same identity from the
message itself, never from anything local (database ids, clocks, instance names). A mail
then carries the same Message-ID on every member, so a receiving system can fold duplicates
by it, and two different alerts never share one.

Fields are joined with the unit separator (US, 0x1f), which a cleaned uid or code cannot
hold, so ("a\\x1fb", "c") and ("a", "b\\x1fc") cannot hash alike; a missing seq is spelt as
an empty field, which no seq can look like.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from agent.models import Decision, MailKind

if TYPE_CHECKING:
    # Only the type: agent.outbox stores identities (agent.outbox.ingest imports this module).
    from agent.outbox import MailIds

# 128 bits of sha256: collisions between different alerts are out of reach for any fleet,
# and the Message-ID stays well inside RFC 5322's 998-octet line limit.
IDENTITY_HEX = 32


def _digest(*fields: str) -> str:
    joined = "\x1f".join(fields)
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:IDENTITY_HEX]


def alert_identity(group: str, uid: str, code: str, seq: int | None, payload: bytes) -> str:
    """The identity of one alert: group, device, code, seq (when the device sends one) and
    the payload's sha256. A retransmission or a held record carries the same bytes, so it keeps
    the identity; a seq that a rebooted device counts again from 0 comes with other bytes (its
    message, its ts), so a new alert never takes an old alert's identity (or Message-ID)."""
    which = str(seq) if seq is not None else ""
    return _digest(group, uid, code, which, hashlib.sha256(payload).hexdigest())


def decision_identity(decision: Decision, group: str | None) -> str:
    """The identity the outbox stores for what intake decided: the one spelling for everyone
    who needs it (the outbox's alerts.identity, the held record's topic). Single mode (None)
    uses the group "". A rejected message has no code: its identity is that of its payload
    (and of its uid, if it had a usable one)."""
    fault, payload = decision.fault, decision.raw.payload
    if fault is None:
        return alert_identity(group or "", decision.uid or "", "", None, payload)
    return alert_identity(group or "", fault.uid, fault.code, fault.seq, payload)


def notice_identity(group: str, kind: str, uid: str, started_at: float) -> str:
    """The identity of a notice about a device (a block, code rotation) or a silence: what it
    is about and when that began. `started_at` is written with repr, which round-trips a
    float exactly, so members that saw the same start agree."""
    return _digest(group, kind, uid, repr(float(started_at)))


def group_message_id(group: str, kind: str, identity: str, domain: str) -> str:
    """A group mode Message-ID (RFC 5322 3.6.4): `<faultmail.<group>.<kind>.<identity>@<domain>>`.

    The kind keeps an alert's first mail, its follow-up and a digest starting with it apart.
    """
    return f"<faultmail.{group}.{kind}.{identity}@{domain}>"


def message_id(gateway_id: str, instance: str, mail_id: int | str, domain: str) -> str:
    """A Message-ID (RFC 5322 3.6.4) unique per gateway, database file and mail, in the From
    domain: `<faultmail.<gateway>.<db-instance>.<mail-id>@<domain>>`."""
    return f"<faultmail.{gateway_id}.{instance}.{mail_id}@{domain}>"


def pick_message_id(
    ids: MailIds,
    used: set[str],
    kind: MailKind,
    identity: str | None,
    mail_id: int,
    domain: str,
    gateway_id: str,
) -> str:
    """A new mail's Message-ID: in group mode the one its identity gives, unless that is
    taken (in the outbox, or by an earlier mail of this pass: the same payload repeated
    without a seq); otherwise, and for alerts stored before schema 5 (no identity), the
    single-mode one, unique per database file. `used` collects what this pass handed out."""
    if ids.group is not None and identity is not None:
        grouped = group_message_id(ids.group, kind.value, identity, domain)
        if grouped not in ids.taken and grouped not in used:
            used.add(grouped)
            return grouped
    return message_id(gateway_id, ids.instance, mail_id, domain)
