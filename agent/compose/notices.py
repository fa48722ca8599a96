"""Security, block and silence notices, and stored reasons read back in the mail's language."""

from __future__ import annotations

import html
import re
from datetime import UTC

from agent import i18n, silences
from agent.compose.context import ComposeContext
from agent.compose.headers import constant_header, device_header, mail_headers
from agent.compose.mime import Composed, set_bodies
from agent.compose.subjects import subject_header
from agent.models import Mail, MailKind, Severity
from agent.sanitize import header_text


def compose_notice(mail: Mail, ctx: ComposeContext) -> Composed:
    """A security or block notice about one device (its flood, code rotation or block)."""
    notice = mail.notice or {}
    lang = ctx.language
    uid = header_text(str(notice.get("uid", "?")), 64)
    count = notice.get("count")
    rate = notice.get("rate_per_s")
    shown = {
        "uid": uid,
        "gateway": ctx.gateway_id,
        "messages": i18n.n(lang, "message", count) if isinstance(count, int) else str(count),
        "rate": rate if isinstance(rate, int | float) else str(rate),
    }
    reason = str(notice.get("reason", ""))
    rotation = notice.get("cause") == "code_rotation" or reason.startswith("code rotation")
    if mail.kind is MailKind.SECURITY_NOTICE and notice.get("blocked") is False:
        cause = str(notice.get("cause") or "")
        if rotation:
            subject = i18n.t(lang, "subject.rotation", **shown)
        else:
            label = i18n.t(lang, "cause.suspicious") if not cause else cause.replace("_", " ")
            subject = i18n.t(lang, "subject.security", cause=label, **shown)
    elif mail.kind is MailKind.SECURITY_NOTICE:
        subject = i18n.t(lang, "subject.security_blocked", **shown)
    else:
        subject = i18n.t(lang, "subject.blocked", **shown)
    msg = Composed(mail_headers(mail, ctx, subject_header(subject, ctx)))
    msg["X-Faultmail-Device"] = device_header("X-Faultmail-Device", uid)
    msg["X-Faultmail-Severity"] = constant_header("X-Faultmail-Severity", Severity.CRITICAL.value)
    tz = ctx.zone

    def when(value: object) -> str:
        ts = float(value) if isinstance(value, int | float) else 0.0
        utc = i18n.datetime_text(lang, ts, UTC)
        local = i18n.datetime_text(lang, ts, tz)
        return utc if local == utc else f"{utc} / {local}"

    samples = notice.get("samples")
    values = {
        "kind": mail.kind.value,
        "subject": str(msg["Subject"]),
        "gateway": ctx.gateway_id,
        "site": ctx.site,
        "gateway_site": ctx.gateway_site,
        "uid": uid,
        "topic": header_text(str(notice.get("topic", "")), 200),
        "reason": translated_reason(reason, lang),
        "rotation": rotation,
        "count": notice.get("count", 0),
        "messages": shown["messages"],
        "rate": shown["rate"],
        "started": when(notice.get("started_at")),
        "blocked": when(notice.get("blocked_at")),
        "samples": [str(x) for x in samples] if isinstance(samples, list) else [],
    }
    set_bodies(msg, ctx, "notice", values)
    return msg


def compose_silence_notice(mail: Mail, ctx: ComposeContext) -> Composed:
    """A silence began or ended (agent.silences says what the notice reads, in the mail's
    language)."""
    notice = dict(mail.notice or {})
    lang = ctx.language
    subject = silences.notice_subject(notice, ctx.gateway_id, lang)
    msg = Composed(mail_headers(mail, ctx, subject_header(subject, ctx)))
    msg["X-Faultmail-Silence"] = str(notice.get("silence_id", ""))
    text = silences.notice_text(notice, ctx.gateway_id, ctx.timezone, lang)
    msg.set_alternative(text, f"<pre>{html.escape(text)}</pre>")
    return msg


# The reasons flood.py and planner.py store are English sentences; these read their numbers
# back so that the notice can say them in the reader's language (anything else: as stored).
_FLOOD_REASON = re.compile(r"more than (?P<threshold>\d+) messages within (?P<window>[\d.]+) s")
_ROTATION_REASON = re.compile(
    r"code rotation: (?P<codes>\d+) distinct fault codes within (?P<window>[\d.]+) s "
    r"\(limit (?P<limit>\d+)\); not blocked, its mails are held to (?P<budget>\d+) per "
)


def translated_reason(reason: str, language: str) -> str:
    """A stored block or rotation reason in `language` (unknown wording is kept as is)."""
    if language == "en":
        return reason
    for pattern, key in ((_FLOOD_REASON, "reason.flood"), (_ROTATION_REASON, "reason.rotation")):
        found = pattern.match(reason)
        if found:
            numbers = {k: float(v) if "." in v else int(v) for k, v in found.groupdict().items()}
            return i18n.t(language, key, **numbers)
    return reason
