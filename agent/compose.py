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


def subject_for(alert: Alert) -> str:
    tag = "RESOLVED" if alert.fault_state is FaultState.RESOLVED else alert.severity.value.upper()
    return header_text(f"[{tag}] {alert.uid} {alert.code}: {alert.message}", SUBJECT_MAX_CHARS)


def compose(mail: Mail, ctx: ComposeContext) -> EmailMessage:
    """Build the mail for `mail`. Deterministic: a retry yields the same headers and body."""
    first = mail.alerts[0]
    msg = EmailMessage(policy=SMTP)
    msg["From"] = ctx.sender
    msg["To"] = ", ".join(mail.recipients)
    msg["Subject"] = subject_for(first)
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
    msg.set_content(_text_body(mail, ctx), cte="quoted-printable")
    return msg


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text_body(mail: Mail, ctx: ComposeContext) -> str:
    lines: list[str] = []
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
