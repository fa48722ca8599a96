"""compose and policy: headers cannot be forged by device text; routes pick recipients."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from agent.compose import ComposeContext, compose, id_ranges, load_templates, parse_id_ranges
from agent.errors import ConfigError
from agent.models import AlertState, Fault, FaultState, Mail, MailKind, RawMessage, Severity
from agent.policy import Policy
from agent.settings import Allowlist, Route, load_settings
from tests.unit.conftest import base_config, one_alert_mail

CTX = ComposeContext(sender="Gateway <gw@example.com>", gateway_id="gw-1", site="Brno")
NOW = 1_800_000_003.0


def _mail(
    message: str, uid: str = "pump-17", code: str = "E042", state: FaultState = FaultState.ACTIVE
) -> Mail:
    return one_alert_mail(message, uid=uid, code=code, state=state)


def test_headers_and_subject() -> None:
    """A mail has From, To, Date, the fixed Message-ID, Auto-Submitted and a telling subject."""
    raw = compose(_mail("Overpressure"), CTX, NOW).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[CRITICAL] pump-17 E042: Overpressure"
    assert msg["Message-ID"] == "<faultmail.gw-1.abc.1@example.com>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["To"] == "ops@example.com" and msg["From"] == "Gateway <gw@example.com>"
    assert msg["Date"] is not None and msg["X-Faultmail-Device"] == "pump-17"
    assert "Precedence" not in msg
    plain = msg.get_body(("plain",))
    assert plain is not None
    body = plain.get_content()
    assert "Overpressure" in body and "Brno" in body
    assert "Details:\r\n  bar: 12.5" in body
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))  # RFC 5322 2.1.1


def test_resolved_subject() -> None:
    """A resolved alert's subject says RESOLVED instead of the severity."""
    msg = compose(_mail("Overpressure", state=FaultState.RESOLVED), CTX, NOW)
    assert str(msg["Subject"]).startswith("[RESOLVED] pump-17 E042")


def test_device_text_cannot_add_headers() -> None:
    """CRLF, NUL and encoded-word tricks in device text never create a header line."""
    hostile = "x\r\nBcc: evil@evil.test\r\n=?UTF-8?Q?=0A?=Bcc: evil2@evil.test\x00\u2028Y"
    raw = compose(_mail(hostile, code="E1\r\nX-Evil: 1"), CTX, NOW).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert set(msg.keys()) >= {"From", "To", "Subject"}
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith((b"Bcc", b"X-Evil")) for line in header_block.split(b"\r\n"))
    assert msg.get_all("To") == ["ops@example.com"]


def test_long_subject_is_truncated() -> None:
    """The subject never exceeds 100 characters and ends with an ellipsis when cut."""
    subject = str(compose(_mail("y" * 400), CTX, NOW)["Subject"])
    assert len(subject) == 100 and subject.endswith("…")


def _decide(pol: Policy, severity: Severity, topic: str = "devices/p1/fault") -> tuple[str, ...]:
    raw = RawMessage(topic=topic, payload=b"{}", mid=1, qos=1, dup=False, received_at=0.0)
    decision = pol.decide(raw, Fault(uid="p1", code="E", severity=severity, message="m"))
    return decision.recipients if decision.state is AlertState.PENDING else ()


def test_routes_by_topic_and_severity() -> None:
    """Recipients are the union of matching routes at or above their minimum severity."""
    pol = Policy(
        [
            Route(topics=["devices/+/fault"], min_severity=Severity.ERROR, to=["ops@example.com"]),
            Route(topics=["devices/p1/#"], min_severity=Severity.INFO, to=["p1@example.com"]),
        ],
        Allowlist(["example.com"], []),
    )
    assert _decide(pol, Severity.CRITICAL) == ("ops@example.com", "p1@example.com")
    assert _decide(pol, Severity.WARNING) == ("p1@example.com",)
    assert _decide(pol, Severity.WARNING, "devices/p2/fault") == ()


def test_unrouted_alert_is_suppressed_with_reason() -> None:
    """An alert no route wants is recorded as suppressed with the reason, never dropped."""
    pol = Policy(
        [Route(topics=["devices/+/fault"], min_severity=Severity.CRITICAL, to=["ops@example.com"])],
        Allowlist(["example.com"], []),
    )
    raw = RawMessage(
        topic="devices/p1/fault", payload=b"{}", mid=1, qos=1, dup=False, received_at=0.0
    )
    decision = pol.decide(raw, Fault(uid="p1", code="E", severity=Severity.INFO, message="m"))
    assert decision.state is AlertState.SUPPRESSED and decision.reason
    assert decision.reason.startswith("no_route")


def test_late_mail_says_how_late_and_stale_is_marked() -> None:
    """A mail that waited says so in the body; past the stale age the subject says [STALE]."""
    late = compose(_mail("Overpressure"), CTX, NOW + 3 * 3600).message().get_body(("plain",))
    assert late is not None and "waited 3h 0m in the gateway's outbox" in late.get_content()
    prompt = compose(_mail("Overpressure"), CTX, NOW).message().get_body(("plain",))
    assert prompt is not None and "waited" not in prompt.get_content()
    stale = compose(_mail("Overpressure"), CTX, NOW + 4 * 86400)
    assert str(stale["Subject"]).startswith("[STALE] [CRITICAL] pump-17")


def test_alert_id_ranges_round_trip() -> None:
    """Alert ids are written as compact runs and read back exactly."""
    ids = [9, 1, 2, 3, 7, 10, 11, 12, 40]
    assert id_ranges(ids) == "1-3 7 9-12 40"
    assert parse_id_ranges(id_ranges(ids)) == sorted(ids)
    assert id_ranges(range(1, 10_001)) == "1-10000"


def test_huge_digest_stays_readable_and_small() -> None:
    """A 10,000-alert digest from 60 devices lists 40 devices with their latest 5 alerts each,
    counts the rest, and still names every alert id in its header."""
    one = one_alert_mail().alerts[0]
    alerts = tuple(
        dataclasses.replace(
            one,
            id=i + 1,
            uid=f"dev-{i % 60:02d}",
            code=f"E{i % 3}",
            severity=Severity.CRITICAL if i % 60 == 59 else Severity.ERROR,
            received_at=1_800_000_000.0 + i,
        )
        for i in range(10_000)
    )
    mail = dataclasses.replace(one_alert_mail(), alerts=alerts, kind=MailKind.DIGEST)
    msg = compose(mail, CTX, NOW)
    raw = msg.as_bytes()
    assert len(raw) < 100_000
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parse_id_ranges(str(parsed["X-Faultmail-Alert-Ids"])) == list(range(1, 10_001))
    text = parsed.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    assert body.startswith("10000 alerts from 60 device(s)")
    # The device with a critical alert comes first, though all are equally busy.
    assert body.splitlines()[2].startswith("dev-59: 166 alerts")
    assert body.count("earlier not listed; the latest:") == 40
    # Hidden: dev-39 (167 alerts) and dev-40 to dev-58 (166 each).
    assert "And 3321 alerts from 20 more device(s), not listed." in body
    assert "faultmail alerts --json" in body


def _hrefs(mail: Mail, ctx: ComposeContext) -> list[str]:
    html = compose(mail, ctx, NOW).message().get_body(("html",))
    assert html is not None
    return re.findall(r'href="([^"]*)"', html.get_content())


def test_device_code_is_percent_encoded_in_the_runbook_link() -> None:
    """A code like ../../admin/users/delete?all=1# stays one path segment of the runbook link:
    it cannot climb the wiki's path, add a query or cut the URL with a fragment."""
    ctx = dataclasses.replace(CTX, runbook_default="https://wiki.example.com/runbooks/{code}")
    mail = _mail("Overpressure", code="../../admin/users/delete?all=1#")
    expected = "https://wiki.example.com/runbooks/..%2F..%2Fadmin%2Fusers%2Fdelete%3Fall%3D1%23"
    assert _hrefs(mail, ctx) == [expected]
    plain = compose(mail, ctx, NOW).message().get_body(("plain",))
    assert plain is not None and f"Runbook:      {expected}" in plain.get_content()
    # A dot segment cannot be encoded away (browsers decode %2e%2e): no link at all.
    assert _hrefs(_mail("Overpressure", code=".."), ctx) == []


def test_plain_codes_and_per_code_runbooks_are_unchanged() -> None:
    """An ordinary code fills the default link as it is; a per-code link is used verbatim."""
    ctx = dataclasses.replace(
        CTX,
        runbook_default="https://wiki.example.com/runbooks/{code}?from=faultmail",
        runbooks={"E7": "https://wiki.example.com/pumps/low-flow"},
    )
    assert _hrefs(_mail("x", code="E042"), ctx) == [
        "https://wiki.example.com/runbooks/E042?from=faultmail"
    ]
    assert _hrefs(_mail("x", code="E7"), ctx) == ["https://wiki.example.com/pumps/low-flow"]


def _ctx(language: str, override_dir: str = "", **changes: object) -> ComposeContext:
    return dataclasses.replace(
        CTX,
        language=language,
        timezone="Europe/Prague",
        templates=load_templates(override_dir, language),
        **changes,  # type: ignore[arg-type]
    )


def _parsed(mail: Mail, ctx: ComposeContext, now: float = NOW) -> EmailMessage:
    parsed = message_from_bytes(compose(mail, ctx, now).as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _plain(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_czech_mail_reads_czech_and_its_subject_decodes_exactly() -> None:
    """A Czech mail: Czech subject tag and body, Czech dates and decimal comma; the subject is
    RFC 2047 encoded on the wire and decodes back to exactly the same text."""
    raw = compose(_mail("Přetlak v potrubí"), _ctx("cs"), NOW + 3 * 3600).as_bytes()
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in header_block.lower() and header_block.isascii()
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[KRITICKÁ] pump-17 E042: Přetlak v potrubí"
    body = _plain(msg)
    assert "Kritická porucha E042 na zařízení pump-17" in body
    assert "Doručeno se zpožděním: zpráva čekala 3 h 0 min" in body
    assert "Přijato:      15. 1. 2027 08:00 UTC / 15. 1. 2027 09:00 CET" in body
    assert "  bar: 12,5" in body and "Závažnost:    kritická" in body
    html = msg.get_body(("html",))
    assert html is not None and "Podrobnosti" in html.get_content()


def test_czech_follow_up_plural_forms() -> None:
    """A Czech follow-up counts 1 výskyt, 3 výskyty, 5 výskytů."""
    one = _mail("Přetlak")
    for count, words in (
        (1, "1 další výskyt "),
        (3, "3 další výskyty "),
        (5, "5 dalších výskytů "),
    ):
        mail = dataclasses.replace(one, kind=MailKind.FOLLOWUP, alerts=one.alerts * count)
        msg = _parsed(mail, _ctx("cs"))
        assert msg["Subject"] == "Re: [KRITICKÁ] pump-17 E042: Přetlak"
        assert f"Porucha E042 na zařízení pump-17: {words}od 15. 1. 2027 09:00 CET" in _plain(msg)


def test_german_mail_and_digest() -> None:
    """German: subject tag, 01.12.2026-style dates, Vorkommen, and a Sammelmeldung digest."""
    one = _mail("Überdruck")
    msg = _parsed(
        dataclasses.replace(one, kind=MailKind.FOLLOWUP, alerts=one.alerts * 2), _ctx("de")
    )
    assert msg["Subject"] == "Re: [KRITISCH] pump-17 E042: Überdruck"
    assert "E042 an pump-17: seit 15.01.2027 09:00 CET 2 weitere Vorkommen." in _plain(msg)
    alerts = tuple(dataclasses.replace(one.alerts[0], id=i, uid=f"p{i % 2}") for i in range(1, 4))
    digest = _parsed(dataclasses.replace(one, kind=MailKind.DIGEST, alerts=alerts), _ctx("de"))
    assert (
        digest["Subject"] == "[SAMMELMELDUNG] 3 Meldungen von 2 Geräten auf gw-1 (davon 3 kritisch)"
    )


def test_ascii_subject_transliterates() -> None:
    """mail.ascii_subject: "Přetlak" → "Pretlak", the subject plain ASCII on the wire."""
    ctx = _ctx("cs", ascii_subject=True)
    raw = compose(_mail("Přetlak " + "ž" * 200), ctx, NOW).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    subject = str(msg["Subject"])
    assert subject.startswith("[KRITICKA] pump-17 E042: Pretlak zzz") and subject.isascii()
    assert len(subject) == 100 and subject.endswith("...")
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0]


def test_czech_notices() -> None:
    """A block notice and a security notice are Czech, with the stored reason translated."""
    notice = {
        "cause": "flood",
        "blocked": True,
        "uid": "rogue",
        "topic": "devices/rogue/fault",
        "started_at": 1_800_000_000.0,
        "blocked_at": 1_800_000_002.0,
        "rate_per_s": 33.3,
        "count": 100,
        "samples": ["{}"],
        "reason": "more than 100 messages within 10 s",
    }
    base = dataclasses.replace(_mail("x"), notice=notice)
    security = _parsed(dataclasses.replace(base, kind=MailKind.SECURITY_NOTICE), _ctx("cs"))
    assert (
        security["Subject"]
        == "[BEZPEČNOST] Zařízení rogue na bráně gw-1 zablokováno: 100 zpráv, 33,3/s"
    )
    text = _plain(security)
    assert "Důvod:            více než 100 zpráv za 10 s" in text
    block = _parsed(dataclasses.replace(base, kind=MailKind.BLOCK_NOTICE), _ctx("cs"))
    assert str(block["Subject"]).startswith("[BLOKOVÁNO] rogue na bráně gw-1")
    assert "ZABLOKOVÁNO" in _plain(block)


def test_templates_override_per_language(tmp_path: Path) -> None:
    """templates_dir/<language>/mail.txt.j2 wins for that language; others keep the shipped."""
    (tmp_path / "cs").mkdir()
    (tmp_path / "cs" / "mail.txt.j2").write_text(
        "Vlastní: {{ last.code }} {{ n('occurrence', 2) }}\n"
    )
    assert _plain(_parsed(_mail("x"), _ctx("cs", str(tmp_path)))).startswith(
        "Vlastní: E042 2 výskyty"
    )
    assert "Kritische Störung" in _plain(_parsed(_mail("x"), _ctx("de", str(tmp_path))))


def test_broken_override_template_stops_startup_naming_the_key(
    tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """An admin's template that does not compile stops startup (the daemon's and send-test's
    context), naming mail.templates_dir, the file and the line, not the first mail sent."""
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / "notice.html.j2").write_text("<p>\n{% if uid %}{{ uid }}</p>")
    doc = base_config(tmp_path)
    doc.setdefault("mail", {})["templates_dir"] = str(overrides)
    settings = load_settings(write_config(doc))
    with pytest.raises(ConfigError) as info:
        ComposeContext.from_settings(settings)
    (key, text), *_ = info.value.problems
    assert key == "mail.templates_dir"
    assert "templates/notice.html.j2, line 2: " in text and "endif" in text
    assert "fix the template" in text
