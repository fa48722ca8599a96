"""The entry point: one Composed mail per outbox mail, alert, follow-up, digest or notice."""

from __future__ import annotations

from agent.compose.context import ComposeContext
from agent.compose.headers import constant_header, device_header, mail_headers
from agent.compose.mime import Composed, set_bodies
from agent.compose.notices import compose_notice, compose_silence_notice
from agent.compose.subjects import subject_for
from agent.compose.values import id_ranges, template_values
from agent.models import Mail, MailKind
from agent.sanitize import header_text

NOTICE_KINDS = frozenset({MailKind.SECURITY_NOTICE, MailKind.BLOCK_NOTICE, MailKind.SILENCE_NOTICE})


def compose(mail: Mail, ctx: ComposeContext, now: float) -> Composed:
    """Build the mail. Headers are the same on every retry; the body says how late it is."""
    if mail.kind is MailKind.SILENCE_NOTICE:
        return compose_silence_notice(mail, ctx)
    if mail.kind in NOTICE_KINDS:
        return compose_notice(mail, ctx)
    # A follow-up is held for its window on purpose; only the wait after that is lateness.
    if mail.kind is MailKind.FOLLOWUP:
        delay = now - mail.created_at
    else:
        delay = now - min(a.received_at for a in mail.alerts)
    first = mail.alerts[0]
    msg = Composed(mail_headers(mail, ctx, subject_for(mail, ctx, stale=delay > ctx.stale_after)))
    if mail.thread_root and mail.thread_root != mail.message_id:
        # RFC 5322 3.6.4: one conversation per device + code in every mail client.
        msg["In-Reply-To"] = device_header("In-Reply-To", mail.thread_root)
        msg["References"] = device_header("References", mail.thread_root)
    if mail.kind is not MailKind.DIGEST:
        msg["X-Faultmail-Device"] = device_header("X-Faultmail-Device", header_text(first.uid, 64))
        msg["X-Faultmail-Code"] = device_header("X-Faultmail-Code", header_text(first.code, 64))
    severity = min(mail.alerts, key=lambda a: a.severity.rank).severity
    msg["X-Faultmail-Severity"] = constant_header("X-Faultmail-Severity", severity.value)
    alert_ids = id_ranges(a.id for a in mail.alerts)
    msg["X-Faultmail-Alert-Ids"] = alert_ids
    values = template_values(mail, ctx, delay, str(msg["Subject"]), alert_ids)
    set_bodies(msg, ctx, "mail", values)
    return msg
