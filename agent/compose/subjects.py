"""Subjects: the alert, follow-up and digest subject, and any subject made safe for the header."""

from __future__ import annotations

from agent import i18n
from agent.compose.context import ComposeContext
from agent.models import Alert, FaultState, Mail, MailKind, Severity
from agent.sanitize import header_text

# A phone's mail list shows about 40-80 characters of a subject; desktop clients more. Keep it
# well under RFC 5322's 78-character line recommendation once folded.
SUBJECT_MAX_CHARS = 100


def tag(alert: Alert, language: str = "en") -> str:
    """An alert's severity word (CRITICAL, ..., RESOLVED) in `language`: the subject's
    {severity} and the tag of the alert in the body."""
    key = "resolved" if alert.fault_state is FaultState.RESOLVED else alert.severity.value
    return i18n.t(language, f"tag.{key}")


def subject_header(text: str, ctx: ComposeContext) -> str:
    """A subject made safe for the header, at most SUBJECT_MAX_CHARS; ASCII only with
    mail.ascii_subject (folded before the cut, so the cut is "..." and the length holds).

    Non-ASCII subjects are RFC 2047 encoded by the email package (policy SMTP, UTF-8)."""
    if ctx.ascii_subject:
        folded = i18n.ascii_fold(header_text(text, len(text) + 1))
        if len(folded) > SUBJECT_MAX_CHARS:
            folded = folded[: SUBJECT_MAX_CHARS - 3] + "..."
        return folded
    return header_text(text, SUBJECT_MAX_CHARS)


def subject_for(mail: Mail, ctx: ComposeContext, *, stale: bool = False) -> str:
    """The subject of an alert, follow-up or digest mail (notices write their own)."""
    last = mail.alerts[-1]
    lang = ctx.language
    if mail.kind is MailKind.DIGEST:
        devices = len({a.uid for a in mail.alerts})
        critical = sum(a.severity is Severity.CRITICAL for a in mail.alerts)
        text = i18n.t(
            lang,
            "subject.digest",
            alerts=i18n.n(lang, "alert", len(mail.alerts)),
            devices=i18n.n(lang, "device", devices),
            gateway=ctx.gateway_id,
        )
        if critical:
            text += i18n.t(
                lang, "subject.digest_critical", critical=i18n.n(lang, "critical", critical)
            )
    else:
        text = ctx.subject_format.format(
            severity=tag(last, lang),
            device=last.uid,
            code=last.code,
            message=last.message,
            gateway=ctx.gateway_id,
            site=ctx.site,
        )
        if mail.kind is MailKind.FOLLOWUP:
            # "Re:" in every language: RFC 5322 3.6.5, and clients thread on it ("AW:" breaks).
            text = "Re: " + text
    stale_tag = i18n.t(lang, "tag.stale") + " " if stale else ""
    return subject_header(stale_tag + text, ctx)
