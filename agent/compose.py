"""Mail from alerts: headers through the email package's header API, never by concatenation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from agent.models import Alert, FaultState, Mail
from agent.sanitize import header_text

# A phone's mail list shows about 40-80 characters of a subject; desktop clients more. Keep it
# well under RFC 5322's 78-character line recommendation once folded.
SUBJECT_MAX_CHARS = 100


@dataclass(frozen=True, slots=True)
class ComposeContext:
    """What every mail needs besides its alerts, fixed at startup."""

    sender: str
    gateway_id: str
    site: str
    # Alerts older than this go out marked [STALE].
    stale_after: float = 3 * 24 * 3600.0


# Below this, waiting in the outbox is normal processing, not worth a line in the mail.
LATE_AFTER_S = 60.0


def subject_for(alert: Alert, *, stale: bool = False) -> str:
    tag = "RESOLVED" if alert.fault_state is FaultState.RESOLVED else alert.severity.value.upper()
    prefix = "[STALE] " if stale else ""
    text = f"{prefix}[{tag}] {alert.uid} {alert.code}: {alert.message}"
    return header_text(text, SUBJECT_MAX_CHARS)


def waited(seconds: float) -> str:
    """A human duration: 45s, 12m, 3h 12m, 2d 4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def compose(mail: Mail, ctx: ComposeContext, now: float) -> EmailMessage:
    """Build the mail for `mail`. Headers are the same on every retry; the body says how
    late the mail is when it waited in the outbox."""
    first = mail.alerts[0]
    delay = now - min(a.received_at for a in mail.alerts)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = ctx.sender
    msg["To"] = ", ".join(mail.recipients)
    msg["Subject"] = subject_for(first, stale=delay > ctx.stale_after)
    msg["Date"] = format_datetime(datetime.fromtimestamp(mail.created_at, UTC))
    msg["Message-ID"] = mail.message_id
    # RFC 3834: machine-generated; auto-responders must not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Faultmail-Gateway"] = header_text(ctx.gateway_id, 64)
    msg["X-Faultmail-Device"] = header_text(first.uid, 64)
    msg["X-Faultmail-Code"] = header_text(first.code, 64)
    msg["X-Faultmail-Severity"] = first.severity.value
    msg["X-Faultmail-Alert-Ids"] = " ".join(str(a.id) for a in mail.alerts)
    msg.set_content(_text_body(mail, ctx, delay), cte="quoted-printable")
    return msg


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text_body(mail: Mail, ctx: ComposeContext, delay: float) -> str:
    lines: list[str] = []
    if delay > LATE_AFTER_S:
        lines += [
            f"Delivered late: this alert waited {waited(delay)} in the gateway's outbox "
            "(the mail relay or the network was unavailable).",
            "",
        ]
    for alert in mail.alerts:
        state = "RESOLVED" if alert.fault_state is FaultState.RESOLVED else "ACTIVE"
        gateway = ctx.gateway_id + (f" ({ctx.site})" if ctx.site else "")
        fields = [
            ("Device", alert.uid),
            ("Gateway", gateway),
            ("Severity", alert.severity.value),
            ("Code", alert.code),
            ("Device time", _when(alert.device_ts)),
            ("Received", _when(alert.received_at)),
        ]
        if alert.seq is not None:
            fields.append(("Sequence", str(alert.seq)))
        width = max(len(label) for label, _ in fields) + 2
        lines += [
            f"{alert.severity.value.upper()} {alert.code} on {alert.uid} ({state})",
            "",
            alert.message,
            "",
        ]
        lines += [f"{label + ':':<{width}}{value}" for label, value in fields]
        if alert.details:
            lines.append("Details:")
            lines += [f"  {key}: {value}" for key, value in alert.details.items()]
        lines.append("")
    ids = ", ".join(str(a.id) for a in mail.alerts)
    lines += ["-- ", f"faultmail on {ctx.gateway_id}; alert ids {ids}"]
    return "\n".join(lines) + "\n"
