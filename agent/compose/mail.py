"""Mail from alerts: text + HTML from templates, threading, and headers set only through the
email package's header API, never by string concatenation."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from agent import i18n, silences
from agent.compose.context import ComposeContext
from agent.compose.headers import constant_header, device_header, mail_headers
from agent.compose.mime import set_alternative, set_bodies
from agent.models import Alert, FaultState, Mail, MailKind, Severity
from agent.sanitize import header_text

# A phone's mail list shows about 40-80 characters of a subject; desktop clients more. Keep it
# well under RFC 5322's 78-character line recommendation once folded.
SUBJECT_MAX_CHARS = 100
# Below this, waiting in the outbox is normal processing, not worth a line in the mail.
LATE_AFTER_S = 60.0
_COLORS = {
    Severity.CRITICAL: "#b00020",
    Severity.ERROR: "#c0392b",
    Severity.WARNING: "#9a7d0a",
    Severity.INFO: "#2e86c1",
}
_RESOLVED_COLOR = "#1e8449"
# A digest after a long outage can carry tens of thousands of alerts. Nobody reads that many
# lines, and rendering them all costs the gateway tens of megabytes: each device gets a summary
# line and its latest few alerts; `faultmail alerts` has the rest.
DIGEST_ROWS_PER_DEVICE = 5
DIGEST_MAX_DEVICES = 40
DIGEST_CODES = 5


def id_ranges(ids: Iterable[int]) -> str:
    """Alert ids as compact runs: [1, 2, 3, 7, 9, 10] → "1-3 7 9-10" (a digest of 10,000
    consecutive alerts stays one short header line)."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return " ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_id_ranges(value: str) -> list[int]:
    """The inverse of id_ranges (for mail filters, tests and benchmarks)."""
    ids: list[int] = []
    for part in value.split():
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def waited(seconds: float, language: str = "en") -> str:
    """A human duration: 45s, 12m, 3h 12m, 2d 4h (or as `language` writes it)."""
    return i18n.duration(language, seconds)


def _tag(alert: Alert, language: str = "en") -> str:
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
            severity=_tag(last, lang),
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


NOTICE_KINDS = frozenset({MailKind.SECURITY_NOTICE, MailKind.BLOCK_NOTICE, MailKind.SILENCE_NOTICE})


def compose(mail: Mail, ctx: ComposeContext, now: float) -> EmailMessage:
    """Build the mail. Headers are the same on every retry; the body says how late it is."""
    if mail.kind is MailKind.SILENCE_NOTICE:
        return _compose_silence_notice(mail, ctx)
    if mail.kind in NOTICE_KINDS:
        return _compose_notice(mail, ctx)
    # A follow-up is held for its window on purpose; only the wait after that is lateness.
    if mail.kind is MailKind.FOLLOWUP:
        delay = now - mail.created_at
    else:
        delay = now - min(a.received_at for a in mail.alerts)
    first = mail.alerts[0]
    msg = mail_headers(mail, ctx, subject_for(mail, ctx, stale=delay > ctx.stale_after))
    if mail.thread_root and mail.thread_root != mail.message_id:
        # RFC 5322 3.6.4: one conversation per device + code in every mail client.
        msg["In-Reply-To"] = device_header("In-Reply-To", mail.thread_root)
        msg["References"] = device_header("References", mail.thread_root)
    if mail.kind is not MailKind.DIGEST:
        msg["X-Faultmail-Device"] = device_header("X-Faultmail-Device", header_text(first.uid, 64))
        msg["X-Faultmail-Code"] = device_header("X-Faultmail-Code", header_text(first.code, 64))
    severity = min(mail.alerts, key=lambda a: a.severity.rank).severity
    msg["X-Faultmail-Severity"] = constant_header("X-Faultmail-Severity", severity.value)
    msg["X-Faultmail-Alert-Ids"] = id_ranges(a.id for a in mail.alerts)
    values = _template_values(mail, ctx, delay, str(msg["Subject"]))
    set_bodies(msg, ctx, "mail", values)
    return msg


def _compose_notice(mail: Mail, ctx: ComposeContext) -> EmailMessage:
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
    msg = mail_headers(mail, ctx, subject_header(subject, ctx))
    msg["X-Faultmail-Device"] = device_header("X-Faultmail-Device", uid)
    msg["X-Faultmail-Severity"] = constant_header("X-Faultmail-Severity", Severity.CRITICAL.value)
    tz = ZoneInfo(ctx.timezone)

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
        "gateway_site": f"{ctx.gateway_id} ({ctx.site})" if ctx.site else ctx.gateway_id,
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


def _compose_silence_notice(mail: Mail, ctx: ComposeContext) -> EmailMessage:
    """A silence began or ended (agent.silences says what the notice reads, in the mail's
    language)."""
    notice = dict(mail.notice or {})
    lang = ctx.language
    subject = silences.notice_subject(notice, ctx.gateway_id, lang)
    msg = mail_headers(mail, ctx, subject_header(subject, ctx))
    msg["X-Faultmail-Silence"] = str(notice.get("silence_id", ""))
    text = silences.notice_text(notice, ctx.gateway_id, ctx.timezone, lang)
    set_alternative(msg, text, f"<pre>{html.escape(text)}</pre>")
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


def _template_values(mail: Mail, ctx: ComposeContext, delay: float, subject: str) -> dict[str, Any]:
    tz = ZoneInfo(ctx.timezone)
    lang = ctx.language

    def when(ts: float | None, zone: Any = UTC) -> str:
        if ts is None:
            return "-"
        return i18n.datetime_text(lang, ts, zone)

    def shown_value(value: object) -> object:
        # English shows a device's numbers as they came; cs and de with a decimal comma.
        if lang == "en" or isinstance(value, bool) or not isinstance(value, int | float):
            return value
        return i18n.number(lang, value)

    def view(alert: Alert) -> dict[str, Any]:
        resolved = alert.fault_state is FaultState.RESOLVED
        return {
            "uid": alert.uid,
            "code": alert.code,
            "message": alert.message,
            "seq": alert.seq,
            "severity": i18n.t(lang, f"severity.{alert.severity.value}"),
            "severity_key": alert.severity.value,
            "tag": _tag(alert, lang),
            "color": _RESOLVED_COLOR if resolved else _COLORS[alert.severity],
            "device_time": when(alert.device_ts),
            "received_utc": when(alert.received_at),
            "received_local": when(alert.received_at, tz),
            "details": [(k, shown_value(v)) for k, v in alert.details.items()],
        }

    groups: dict[str, list[Alert]] = {}
    for alert in mail.alerts:
        groups.setdefault(alert.uid, []).append(alert)
    if mail.kind is MailKind.DIGEST:
        # A bounded sample per device; other mails carry one alert or a few repeats, all listed.
        alerts: list[dict[str, Any]] = []
        devices, hidden_devices = _digest_devices(groups, view, lambda ts: when(ts, tz), lang)
        shown = sum(len(d["rows"]) for d in devices)
    else:
        alerts, devices, hidden_devices = [view(a) for a in mail.alerts], [], []
        shown = len(alerts)
    last = mail.alerts[-1]
    duration = None
    if mail.kind is MailKind.RESOLVED and mail.opened_at is not None:
        duration = waited(max(0.0, last.received_at - mail.opened_at), lang)
    runbook = ctx.runbooks.get(last.code) or runbook_link(ctx.runbook_default, last.code)
    return {
        "kind": mail.kind.value,
        "subject": subject,
        "gateway": ctx.gateway_id,
        "site": ctx.site,
        "gateway_site": f"{ctx.gateway_id} ({ctx.site})" if ctx.site else ctx.gateway_id,
        "alerts": alerts,
        "total": len(mail.alerts),
        "first": alerts[0] if alerts else view(mail.alerts[0]),
        "last": alerts[-1] if alerts else view(last),
        "devices": devices,
        "device_count": len(groups),
        "more_devices": len(hidden_devices),
        "more_devices_alerts": sum(len(groups[uid]) for uid in hidden_devices),
        "unlisted": len(mail.alerts) - shown,
        "duration": duration,
        "runbook": runbook,
        "since_local": when(mail.alerts[0].received_at, tz),
        "late": waited(delay, lang) if delay > LATE_AFTER_S else "",
        "alert_ids": id_ranges(a.id for a in mail.alerts),
        "suppressed_before": mail.suppressed_before,
        # Who acknowledged the problem, in its resolve or escalation (agent.planner).
        "ack": _ack_view(mail, lambda ts: when(ts, tz)),
    }


def _ack_view(mail: Mail, when: Callable[[float], str]) -> dict[str, str] | None:
    ack = (mail.notice or {}).get("acknowledged")
    if not isinstance(ack, dict):
        return None
    at = ack.get("at")
    return {
        "by": str(ack.get("by", "")),
        "at": when(float(at)) if isinstance(at, int | float) else "-",
        "note": str(ack.get("note") or ""),
    }


def runbook_link(template: str, code: str) -> str:
    """mail.runbook_default with the device's code filled in as one percent-encoded path
    segment (RFC 3986 2.1), or "" for none.

    The code is device text: unencoded, "../../admin/users/delete?all=1#" would climb the
    wiki's path, add a query and cut the rest off as a fragment. A code that is itself a dot
    segment ("." or "..") gets no link: browsers remove dot segments even percent-encoded
    (WHATWG URL: "%2e%2e" is a double-dot segment).
    """
    if not template or code in (".", ".."):
        return ""
    return template.format(code=quote(code, safe=""))


def _digest_devices(
    groups: dict[str, list[Alert]],
    view: Callable[[Alert], dict[str, Any]],
    when: Callable[[float], str],
    language: str = "en",
) -> tuple[list[dict[str, Any]], list[str]]:
    """A digest's device summaries (most severe, then busiest first; at most
    DIGEST_MAX_DEVICES), and the devices left out."""
    order = sorted(
        groups, key=lambda u: (min(a.severity.rank for a in groups[u]), -len(groups[u]), u)
    )
    devices = []
    for uid in order[:DIGEST_MAX_DEVICES]:
        items = groups[uid]
        shown = items[-DIGEST_ROWS_PER_DEVICE:]
        codes = Counter(a.code for a in items)
        top = ", ".join(f"{c} x{n}" for c, n in codes.most_common(DIGEST_CODES))
        more = len(codes) - DIGEST_CODES
        rest = i18n.t(language, "digest.codes_more", codes=i18n.n(language, "more_code", more))
        devices.append(
            {
                "uid": uid,
                "count": len(items),
                "codes": top + (rest if more > 0 else ""),
                "first": when(items[0].received_at),
                "last": when(items[-1].received_at),
                "rows": [view(a) for a in shown],
                "hidden": len(items) - len(shown),
            }
        )
    return devices, order[DIGEST_MAX_DEVICES:]
