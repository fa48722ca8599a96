"""Silence notices in the reader's language (issue 16): the start and end notices composed
in Czech read naturally, with plural forms and local dates, and the subject decodes back."""

from __future__ import annotations

from email import message_from_bytes, policy

from agent import silences
from agent.compose import ComposeContext, compose, load_templates
from agent.models import Mail, MailKind

T0 = 1_796_095_140.0  # 2026-12-01 03:19:00 UTC, 04:19 in Prague
NOTICE: dict[str, object] = {
    "silence_id": 3,
    "scope": "device pump-*, code E04?",
    "device": "pump-*",
    "code": "E04?",
    "author": "novák",
    "reason": "výměna ventilu",
    "starts_at": T0,
    "ends_at": T0 + 7200,
    "ended_at": None,
    "ended_by": None,
}
ENDED: dict[str, object] = {
    **NOTICE,
    "event": "ended",
    "ended_at": T0 + 3600,
    "ended_by": "dvořák",
    "summary": [
        {
            "uid": "pump-1",
            "code": "E042",
            "count": 3,
            "first_at": T0 + 60,
            "last_at": T0 + 1800,
            "last_state": "active",
            "severity": "error",
            "message": "Přetlak",
        },
        {
            "uid": "pump-2",
            "code": "E041",
            "count": 5,
            "first_at": T0 + 120,
            "last_at": T0 + 2400,
            "last_state": "resolved",
            "severity": "warning",
            "message": "Nízký tlak",
        },
    ],
    "still_active": ["pump-1 E042 (alert 12)"],
}


def _ctx(language: str) -> ComposeContext:
    return ComposeContext(
        sender="Brána <gw@example.com>",
        gateway_id="gw-1",
        site="Brno",
        timezone="Europe/Prague",
        templates=load_templates("", language),
        language=language,
    )


def _compose(notice: dict[str, object], language: str) -> tuple[str, str]:
    mail = Mail(
        id=7,
        message_id="<faultmail.gw-1.abc.7@example.com>",
        created_at=T0,
        recipients=("ops@example.com",),
        attempts=0,
        alerts=(),
        kind=MailKind.SILENCE_NOTICE,
        notice=notice,
    )
    msg = compose(mail, _ctx(language), T0)
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    plain = parsed.get_body(("plain",))
    assert plain is not None
    return str(parsed["Subject"]), plain.get_content().replace("\r\n", "\n")


def test_czech_silence_start_notice() -> None:
    """Start: who, why, scope, until when, in Czech with Czech dates; the subject with its
    diacritics decodes back exactly."""
    subject, text = _compose({**NOTICE, "event": "started"}, "cs")
    expected = silences.notice_subject({**NOTICE, "event": "started"}, "gw-1", "cs")
    assert subject == expected
    assert subject == (
        "[ZTLUMENO] zařízení pump-*, kód E04? na bráně gw-1 do 1. 12. 2026 05:19 UTC, "
        "zadal(a) novák"
    )
    assert "Hlášení (zařízení pump-*, kód E04?) na bráně gw-1 jsou ztlumena" in text
    assert "Zadal(a):         novák" in text
    assert "Důvod:            výměna ventilu" in text
    assert "Do:               1. 12. 2026 05:19 UTC / 1. 12. 2026 06:19 CET" in text
    assert "Ukončit předčasně:  faultmail silence expire 3" in text
    assert "faultmail na bráně gw-1" in text


def test_czech_silence_end_notice_summarises_with_plural_forms() -> None:
    """End: the summary per device + code (3 výskyty, 5 výskytů), the total in the subject,
    who ended it, what is still active; the subject decodes back exactly."""
    subject, text = _compose(ENDED, "cs")
    assert subject == silences.notice_subject(ENDED, "gw-1", "cs")
    assert subject == (
        "[ZTLUMENÍ SKONČILO] zařízení pump-*, kód E04? na bráně gw-1: během něj 8 hlášení, "
        "1 stále aktivní"
    )
    assert "Ztlumení hlášení (zařízení pump-*, kód E04?) na bráně gw-1 skončilo." in text
    assert "Ukončeno:         1. 12. 2026 04:19 UTC / 1. 12. 2026 05:19 CET (dvořák)" in text
    assert "Co se během ztlumení stalo:" in text
    assert "pump-1 E042 (chyba): 3 výskyty, " in text
    assert "pump-2 E041 (varování): 5 výskytů, " in text
    assert "poslední stav vyřešeno: Nízký tlak" in text
    assert "Stále aktivní, proto se teď posílají jako aktivní hlášení:" in text
    assert "  pump-1 E042 (hlášení 12)" in text
    assert "alert" not in text.replace("faultmail", "")


def test_expired_silence_and_english_stay_as_before() -> None:
    """An expired silence says so in each language; English keeps its wording."""
    expired = {**ENDED, "ended_by": "expired", "summary": [], "still_active": []}
    _, czech = _compose(expired, "cs")
    assert "(vypršelo)" in czech and "Během ztlumení nepřišlo žádné hlášení." in czech
    _, german = _compose(expired, "de")
    assert "(abgelaufen)" in german and "Währenddessen kamen keine Meldungen." in german
    subject, english = _compose(ENDED, "en")
    assert subject == (
        "[SILENCE ENDED] device pump-*, code E04? on gw-1: 8 alert(s) during it, 1 still active"
    )
    assert "Silence id:   3\n" in english
    assert (
        "  pump-1 E042 (error): 3 alert(s), 2026-12-01 03:20 UTC / 2026-12-01 04:20 CET" in english
    )
    assert "last active: Přetlak" in english
    assert "Still active, mailed now as active alerts:\n  pump-1 E042 (alert 12)\n" in english
