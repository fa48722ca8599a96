"""What the templates render: alert views, digest summaries, durations, ids, runbook link."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any
from urllib.parse import quote

from agent import i18n
from agent.compose.context import ComposeContext
from agent.compose.subjects import tag
from agent.models import Alert, FaultState, Mail, MailKind, Severity

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


def waited(seconds: float, language: str = "en") -> str:
    """A human duration: 45s, 12m, 3h 12m, 2d 4h (or as `language` writes it)."""
    return i18n.duration(language, seconds)


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


def template_values(
    mail: Mail, ctx: ComposeContext, delay: float, subject: str, alert_ids: str
) -> dict[str, Any]:
    """What the mail templates render; subject and alert_ids as the headers carry them."""
    tz = ctx.zone
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
            "tag": tag(alert, lang),
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
        "gateway_site": ctx.gateway_site,
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
        "alert_ids": alert_ids,
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
