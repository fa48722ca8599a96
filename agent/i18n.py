"""Mail in the reader's language (`mail.language`: "en", "cs" or "de").

Every fixed string of a mail (subjects, text and HTML bodies, notices, digests, follow-ups)
lives in CATALOGUE, one entry per language, written as a native speaker would put it rather
than word for word. The API, for agent/compose/ and for any module that writes mail:

    t(lang, key, **values)       the catalogue text for key, str.format'ed with values; an int
                                 or float value is formatted for the locale first (number())
    n(lang, noun, count)         "5 výskytů": the count and the plural form of a NOUNS entry
    plural(lang, count, forms)   the form of `forms` (one, few, other) a count takes
    number(lang, value)          1234.5 → "1,234.5" / "1 234,5" / "1.234,5"
    datetime_text(lang, ts, tz)  "2026-12-01 03:19:00 CET" / "1. 12. 2026 03:19 CET" /
                                 "01.12.2026 03:19 CET"
    duration(lang, seconds)      "3h 12m" / "3 h 12 min" / "3 Std. 12 Min."
    ascii_fold(text)             "Přetlak" → "Pretlak" (mail.ascii_subject)

Templates get t, n and number bound to the mail's language (see agent.compose.load_templates):
`{{ t("label.device") }}`, `{{ n("alert", total) }}`.

Plural rules (CLDR): English and German have one / other; Czech has one (1), few (2-4) and
other (0, 5 and more): 1 výskyt, 2 výskyty, 5 výskytů. A NOUNS entry lists the forms in that
order; English and German list two.

A key or noun missing from a language falls back to English (tests/unit/test_i18n.py checks
that none is missing), so a mail is never lost to a catalogue gap.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, tzinfo
from typing import Any

LANGUAGES = ("en", "cs", "de")

# Forms per language: (one, other) for en and de, (one, few, other) for cs.
NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "alert": {
        "en": ("alert", "alerts"),
        "cs": ("hlášení", "hlášení", "hlášení"),
        "de": ("Meldung", "Meldungen"),
    },
    # After "from" / "od" / "von" (German takes the dative plural).
    "device": {
        # English keeps the "device(s)" that subjects had before languages (mail filters).
        "en": ("device(s)", "device(s)"),
        "cs": ("zařízení", "zařízení", "zařízení"),
        "de": ("Gerät", "Geräten"),
    },
    "more_device": {
        "en": ("more device(s)", "more device(s)"),
        "cs": ("dalšího zařízení", "dalších zařízení", "dalších zařízení"),
        "de": ("weiteren Gerät", "weiteren Geräten"),
    },
    "occurrence": {
        "en": ("occurrence", "occurrences"),
        "cs": ("výskyt", "výskyty", "výskytů"),
        "de": ("Vorkommen", "Vorkommen"),
    },
    # A follow-up: "occurred 3 more times" / "3 další výskyty" / "3 weitere Vorkommen".
    "more_time": {
        "en": ("more time", "more times"),
        "cs": ("další výskyt", "další výskyty", "dalších výskytů"),
        "de": ("weiteres Vorkommen", "weitere Vorkommen"),
    },
    "earlier_repeat": {
        "en": ("earlier repeat", "earlier repeats"),
        "cs": ("předchozí opakování", "předchozí opakování", "předchozích opakování"),
        "de": ("frühere Wiederholung", "frühere Wiederholungen"),
    },
    "message": {
        "en": ("message", "messages"),
        "cs": ("zpráva", "zprávy", "zpráv"),
        "de": ("Nachricht", "Nachrichten"),
    },
    "more_code": {
        "en": ("more code", "more codes"),
        "cs": ("další kód", "další kódy", "dalších kódů"),
        "de": ("weiterer Code", "weitere Codes"),
    },
    "critical": {
        "en": ("critical", "critical"),
        "cs": ("kritické", "kritická", "kritických"),
        "de": ("kritisch", "kritisch"),
    },
    "suppressed_alert": {
        "en": ("alert from this device was", "alerts from this device were"),
        "cs": ("hlášení tohoto zařízení", "hlášení tohoto zařízení", "hlášení tohoto zařízení"),
        "de": ("Meldung dieses Geräts", "Meldungen dieses Geräts"),
    },
    # Silence notices: alerts recorded during a silence (the subject's total, each summary
    # row's count; English keeps the "alert(s)" those notices had before languages).
    "silenced_alert": {
        "en": ("alert(s)", "alert(s)"),
        "cs": ("hlášení", "hlášení", "hlášení"),
        "de": ("Meldung", "Meldungen"),
    },
    "silence_row": {
        "en": ("alert(s)", "alert(s)"),
        "cs": ("výskyt", "výskyty", "výskytů"),
        "de": ("Meldung", "Meldungen"),
    },
    "still_active": {
        "en": ("still active", "still active"),
        "cs": ("stále aktivní", "stále aktivní", "stále aktivních"),
        "de": ("noch aktiv", "noch aktiv"),
    },
    "earlier_omitted": {
        "en": ("earlier not listed", "earlier not listed"),
        "cs": ("starší vynecháno", "starší vynechána", "starších vynecháno"),
        "de": ("ältere nicht aufgeführt", "ältere nicht aufgeführt"),
    },
}

CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        # Subject tags: ticketing systems may parse them (see mail.ascii_subject).
        "tag.critical": "CRITICAL",
        "tag.error": "ERROR",
        "tag.warning": "WARNING",
        "tag.info": "INFO",
        "tag.resolved": "RESOLVED",
        "tag.stale": "[STALE]",
        "severity.critical": "critical",
        "severity.error": "error",
        "severity.warning": "warning",
        "severity.info": "info",
        "subject.digest": "[DIGEST] {alerts} from {devices} on {gateway}",
        "subject.digest_critical": " ({critical})",
        "subject.rotation": "[SECURITY] Device {uid} on {gateway}: code rotation "
        "({messages} at {rate}/s), not blocked",
        "subject.security": "[SECURITY] Device {uid} on {gateway}: {cause} "
        "({messages} at {rate}/s), not blocked",
        "subject.security_blocked": "[SECURITY] Device {uid} blocked on {gateway}: "
        "{messages} at {rate}/s",
        "subject.blocked": "[BLOCKED] {uid} on {gateway}: alerts not mailed until unblocked",
        "late.text": "Delivered late: this waited {late} in the gateway's outbox (the mail "
        "relay or the network was unavailable).",
        "late.html": "Delivered late: this waited {late} in the gateway's outbox.",
        "digest.intro": "{alerts} from {devices} on {gateway}, collected while mail could "
        "not go out.",
        "digest.heading": "{alerts} from {devices}",
        "digest.intro_html": "Gateway {gateway}: collected while mail could not go out.",
        "digest.device": "{alerts} ({codes}), {first} to {last}",
        "digest.hidden": "{hidden}; the latest:",
        "digest.more_devices": "And {alerts} from {devices}, not listed.",
        "digest.every_alert": "Every alert: {command} on the gateway.",
        "digest.codes_more": ", {codes}",
        "resolved": "RESOLVED: {code} on {uid}",
        "resolved.after": " after {duration}",
        "followup": "{code} on {uid} occurred {times} since {since}",
        "alert.critical": "{tag} {code} on {uid}",
        "alert.error": "{tag} {code} on {uid}",
        "alert.warning": "{tag} {code} on {uid}",
        "alert.info": "{tag} {code} on {uid}",
        "alert.repeats": " (and {repeats})",
        "label.device": "Device",
        "label.gateway": "Gateway",
        "label.severity": "Severity",
        "label.code": "Code",
        "label.device_time": "Device time",
        "label.received": "Received",
        "label.sequence": "Sequence",
        "label.runbook": "Runbook",
        "label.details": "Details",
        "suppressed": "Also: {alerts} suppressed by the per-device rate limit since its "
        "previous mail",
        "suppressed.see": " (see {command})",
        "footer": "faultmail on {gateway}; alert ids {ids}",
        "ack": "Acknowledged by {by} on {at}",
        "footer.notice": "faultmail on {gateway}",
        "notice.rotation": "SECURITY: device {uid} on gateway {gateway} is rotating fault codes "
        "(code rotation): a new code for almost every message, as a device evading "
        "per-problem grouping would. It is NOT blocked: its mails are held to its budget and "
        "the rest go out in digests.",
        "notice.rotation_heading": "SECURITY: device {uid} is rotating fault codes (code rotation)",
        "notice.rotation_html": "It is not blocked: its mails are held to its budget and the "
        "rest go out in digests.",
        "notice.security": "SECURITY: faultmail blocked device {uid} on gateway {gateway}.",
        "notice.security_heading": "SECURITY: device {uid} blocked",
        "notice.blocked": "Device {uid} is BLOCKED on gateway {gateway}: its alerts are not "
        "mailed until a technician unblocks it.",
        "notice.blocked_heading": "Device {uid} is blocked",
        "notice.blocked_html": "Its alerts are not mailed until a technician unblocks it.",
        "notice.gateway": "Gateway {gateway}.",
        "label.uid": "Device UID",
        "label.topic": "Topic",
        "label.reason": "Reason",
        "label.first_code": "First code at",
        "label.detected": "Detected at",
        "label.flood_started": "Flood started",
        "label.blocked_at": "Blocked at",
        "label.rate": "Observed rate",
        "label.publisher": "Publisher",
        "notice.rate": "{rate} messages/s ({messages})",
        "notice.rate_window": "{rate} messages/s ({messages} in the window)",
        "notice.publisher": "MQTT does not tell subscribers which client published; the "
        "broker log shows the client id publishing to {topic}.",
        "notice.first_codes": "First codes it sent",
        "notice.samples": "Sample payloads (escaped, truncated)",
        "notice.samples_html": "Sample payloads",
        "notice.counters": "Its counters, with `suspicious` raised",
        "notice.stop": "To stop mailing it after investigation",
        "notice.while_blocked": "While blocked, its messages are acknowledged and counted "
        "only ({command}).",
        "notice.unblock": "To unblock after investigation",
        "reason.flood": "more than {threshold} messages within {window} s",
        "reason.rotation": "code rotation: {codes} distinct fault codes within {window} s "
        "(limit {limit}); not blocked, its mails are held to {budget} per {window} s, the "
        "rest in digests",
        "cause.suspicious": "suspicious",
        "subject.silence": "[SILENCE] {scope} on {gateway} silenced until {until} by {author}",
        "subject.silence_ended": "[SILENCE ENDED] {scope} on {gateway}: {alerts} during it, "
        "{active}",
        "silence.scope": "device {device}",
        "silence.scope_code": ", code {code}",
        "silence.started": "Alerts of {scope} on gateway {gateway} are silenced: they are "
        "recorded (state `silenced`) but not mailed until the silence ends.",
        "silence.ended": "The silence of {scope} on gateway {gateway} has ended.",
        "silence.label.id": "Silence id",
        "silence.label.scope": "Scope",
        "silence.label.author": "Created by",
        "silence.label.reason": "Reason",
        "silence.label.from": "From",
        "silence.label.until": "Until",
        "silence.label.ended": "Ended",
        "silence.expired": "expired",
        "silence.summary": "What happened during it:",
        "silence.no_alerts": "No alerts during it.",
        "silence.row": "{uid} {code} ({severity}): {count}, {first} .. {last}, "
        "last {state}: {message}",
        "silence.state.active": "active",
        "silence.state.resolved": "resolved",
        "silence.still_active": "Still active, mailed now as active alerts:",
        "silence.active_item": "{uid} {code} (alert {id})",
        "silence.end_early": "To end it early:  {command}",
    },
    "cs": {
        "tag.critical": "KRITICKÁ",
        "tag.error": "CHYBA",
        "tag.warning": "VAROVÁNÍ",
        "tag.info": "INFO",
        "tag.resolved": "VYŘEŠENO",
        "tag.stale": "[ZASTARALÉ]",
        "severity.critical": "kritická",
        "severity.error": "chyba",
        "severity.warning": "varování",
        "severity.info": "informace",
        "subject.digest": "[SOUHRN] {alerts} od {devices}, brána {gateway}",
        "subject.digest_critical": " (z toho {critical})",
        "subject.rotation": "[BEZPEČNOST] Zařízení {uid} na bráně {gateway} střídá kódy "
        "poruch ({messages}, {rate}/s), neblokováno",
        "subject.security": "[BEZPEČNOST] Zařízení {uid} na bráně {gateway}: {cause} "
        "({messages}, {rate}/s), neblokováno",
        "subject.security_blocked": "[BEZPEČNOST] Zařízení {uid} na bráně {gateway} "
        "zablokováno: {messages}, {rate}/s",
        "subject.blocked": "[BLOKOVÁNO] {uid} na bráně {gateway}: hlášení se neposílají, "
        "dokud ho někdo neodblokuje",
        "late.text": "Doručeno se zpožděním: zpráva čekala {late} ve frontě brány (poštovní "
        "server nebo síť nebyly dostupné).",
        "late.html": "Doručeno se zpožděním: zpráva čekala {late} ve frontě brány.",
        "digest.intro": "{alerts} od {devices} na bráně {gateway}, nashromážděno v době, kdy "
        "nešlo odesílat poštu.",
        "digest.heading": "{alerts} od {devices}",
        "digest.intro_html": "Brána {gateway}: nashromážděno v době, kdy nešlo odesílat poštu.",
        "digest.device": "{alerts} ({codes}), od {first} do {last}",
        "digest.hidden": "{hidden}, nejnovější:",
        "digest.more_devices": "Nevypsáno: {alerts} od {devices}.",
        "digest.every_alert": "Všechna hlášení vypíše na bráně příkaz {command}.",
        "digest.codes_more": " a {codes}",
        "resolved": "VYŘEŠENO: {code} na zařízení {uid}",
        "resolved.after": " po {duration}",
        "followup": "Porucha {code} na zařízení {uid}: {times} od {since}",
        "alert.critical": "Kritická porucha {code} na zařízení {uid}",
        "alert.error": "Chyba {code} na zařízení {uid}",
        "alert.warning": "Varování {code} na zařízení {uid}",
        "alert.info": "Informace {code} ze zařízení {uid}",
        "alert.repeats": " (a {repeats})",
        "label.device": "Zařízení",
        "label.gateway": "Brána",
        "label.severity": "Závažnost",
        "label.code": "Kód",
        "label.device_time": "Čas zařízení",
        "label.received": "Přijato",
        "label.sequence": "Pořadové č.",
        "label.runbook": "Postup",
        "label.details": "Podrobnosti",
        "suppressed": "Navíc: od minulého e-mailu omezovač četnosti zadržel {alerts}",
        "suppressed.see": " (viz {command})",
        "footer": "faultmail na bráně {gateway}; čísla hlášení {ids}",
        "ack": "Převzal(a) {by} {at}",
        "footer.notice": "faultmail na bráně {gateway}",
        "notice.rotation": "BEZPEČNOST: zařízení {uid} na bráně {gateway} neustále střídá kódy "
        "poruch: téměř každá zpráva má nový kód, jako by se zařízení snažilo obejít "
        "seskupování podle poruchy. NENÍ zablokováno: jeho e-maily jsou omezeny rozpočtem a "
        "zbytek chodí v souhrnech.",
        "notice.rotation_heading": "BEZPEČNOST: zařízení {uid} střídá kódy poruch",
        "notice.rotation_html": "Není zablokováno: jeho e-maily jsou omezeny rozpočtem a "
        "zbytek chodí v souhrnech.",
        "notice.security": "BEZPEČNOST: faultmail zablokoval zařízení {uid} na bráně {gateway}.",
        "notice.security_heading": "BEZPEČNOST: zařízení {uid} zablokováno",
        "notice.blocked": "Zařízení {uid} je na bráně {gateway} ZABLOKOVÁNO: jeho hlášení se "
        "neposílají, dokud ho technik neodblokuje.",
        "notice.blocked_heading": "Zařízení {uid} je zablokováno",
        "notice.blocked_html": "Jeho hlášení se neposílají, dokud ho technik neodblokuje.",
        "notice.gateway": "Brána {gateway}.",
        "label.uid": "UID zařízení",
        "label.topic": "Topic",
        "label.reason": "Důvod",
        "label.first_code": "První kód",
        "label.detected": "Zjištěno",
        "label.flood_started": "Začátek zahlcení",
        "label.blocked_at": "Zablokováno",
        "label.rate": "Zjištěná četnost",
        "label.publisher": "Odesílatel",
        "notice.rate": "{rate} zpr./s ({messages})",
        "notice.rate_window": "{rate} zpr./s ({messages} v okně)",
        "notice.publisher": "MQTT odběratelům neprozradí, který klient zprávu poslal; "
        "client id, který publikuje do {topic}, najdete v logu brokeru.",
        "notice.first_codes": "První kódy, které poslalo",
        "notice.samples": "Ukázky zpráv (escapované, zkrácené)",
        "notice.samples_html": "Ukázky zpráv",
        "notice.counters": "Jeho čítače se zvýšeným `suspicious`",
        "notice.stop": "Zastavit jeho e-maily po prošetření",
        "notice.while_blocked": "Dokud je zablokováno, jeho zprávy se jen potvrzují a "
        "počítají ({command}).",
        "notice.unblock": "Odblokovat po prošetření",
        "reason.flood": "více než {threshold} zpráv za {window} s",
        "reason.rotation": "střídání kódů: {codes} různých kódů poruch za {window} s (limit "
        "{limit}); neblokováno, jeho e-maily jsou omezeny na {budget} za {window} s, zbytek "
        "v souhrnech",
        "cause.suspicious": "podezřelé chování",
        "subject.silence": "[ZTLUMENO] {scope} na bráně {gateway} do {until}, zadal(a) {author}",
        "subject.silence_ended": "[ZTLUMENÍ SKONČILO] {scope} na bráně {gateway}: během něj "
        "{alerts}, {active}",
        "silence.scope": "zařízení {device}",
        "silence.scope_code": ", kód {code}",
        "silence.started": "Hlášení ({scope}) na bráně {gateway} jsou ztlumena: ukládají se "
        "(stav `silenced`), ale e-mailem se neposílají, dokud ztlumení neskončí.",
        "silence.ended": "Ztlumení hlášení ({scope}) na bráně {gateway} skončilo.",
        "silence.label.id": "Číslo ztlumení",
        "silence.label.scope": "Rozsah",
        "silence.label.author": "Zadal(a)",
        "silence.label.reason": "Důvod",
        "silence.label.from": "Od",
        "silence.label.until": "Do",
        "silence.label.ended": "Ukončeno",
        "silence.expired": "vypršelo",
        "silence.summary": "Co se během ztlumení stalo:",
        "silence.no_alerts": "Během ztlumení nepřišlo žádné hlášení.",
        "silence.row": "{uid} {code} ({severity}): {count}, {first} až {last}, "
        "poslední stav {state}: {message}",
        "silence.state.active": "aktivní",
        "silence.state.resolved": "vyřešeno",
        "silence.still_active": "Stále aktivní, proto se teď posílají jako aktivní hlášení:",
        "silence.active_item": "{uid} {code} (hlášení {id})",
        "silence.end_early": "Ukončit předčasně:  {command}",
    },
    "de": {
        "tag.critical": "KRITISCH",
        "tag.error": "FEHLER",
        "tag.warning": "WARNUNG",
        "tag.info": "INFO",
        "tag.resolved": "BEHOBEN",
        "tag.stale": "[VERALTET]",
        "severity.critical": "kritisch",
        "severity.error": "Fehler",
        "severity.warning": "Warnung",
        "severity.info": "Info",
        "subject.digest": "[SAMMELMELDUNG] {alerts} von {devices} auf {gateway}",
        "subject.digest_critical": " (davon {critical})",
        "subject.rotation": "[SICHERHEIT] Gerät {uid} auf {gateway} wechselt Fehlercodes "
        "({messages}, {rate}/s), nicht gesperrt",
        "subject.security": "[SICHERHEIT] Gerät {uid} auf {gateway}: {cause} "
        "({messages}, {rate}/s), nicht gesperrt",
        "subject.security_blocked": "[SICHERHEIT] Gerät {uid} auf {gateway} gesperrt: "
        "{messages}, {rate}/s",
        "subject.blocked": "[GESPERRT] {uid} auf {gateway}: keine Meldungen per E-Mail bis zur "
        "Entsperrung",
        "late.text": "Verspätet zugestellt: Diese Nachricht wartete {late} im Postausgang des "
        "Gateways (Mailserver oder Netzwerk nicht erreichbar).",
        "late.html": "Verspätet zugestellt: Diese Nachricht wartete {late} im Postausgang des "
        "Gateways.",
        "digest.intro": "{alerts} von {devices} auf {gateway}, gesammelt, während keine "
        "E-Mails versendet werden konnten.",
        "digest.heading": "{alerts} von {devices}",
        "digest.intro_html": "Gateway {gateway}: gesammelt, während keine E-Mails versendet "
        "werden konnten.",
        "digest.device": "{alerts} ({codes}), {first} bis {last}",
        "digest.hidden": "{hidden}; die neuesten:",
        "digest.more_devices": "Dazu {alerts} von {devices}, nicht aufgeführt.",
        "digest.every_alert": "Alle Meldungen: {command} auf dem Gateway.",
        "digest.codes_more": ", {codes}",
        "resolved": "BEHOBEN: {code} an {uid}",
        "resolved.after": " nach {duration}",
        "followup": "{code} an {uid}: seit {since} {times}",
        "alert.critical": "Kritische Störung {code} an {uid}",
        "alert.error": "Fehler {code} an {uid}",
        "alert.warning": "Warnung {code} an {uid}",
        "alert.info": "Info {code} von {uid}",
        "alert.repeats": " (und {repeats})",
        "label.device": "Gerät",
        "label.gateway": "Gateway",
        "label.severity": "Schweregrad",
        "label.code": "Code",
        "label.device_time": "Gerätezeit",
        "label.received": "Empfangen",
        "label.sequence": "Sequenz",
        "label.runbook": "Runbook",
        "label.details": "Details",
        "suppressed": "Außerdem: Seit der letzten E-Mail hat die Ratenbegrenzung {alerts} "
        "zurückgehalten",
        "suppressed.see": " (siehe {command})",
        "footer": "faultmail auf {gateway}; Meldungsnummern {ids}",
        "ack": "Übernommen von {by} am {at}",
        "footer.notice": "faultmail auf {gateway}",
        "notice.rotation": "SICHERHEIT: Gerät {uid} auf Gateway {gateway} wechselt ständig "
        "seine Fehlercodes: fast jede Nachricht trägt einen neuen Code, so wie ein Gerät, das "
        "die Gruppierung nach Problem umgehen will. Es ist NICHT gesperrt: Seine E-Mails "
        "bleiben im Kontingent, der Rest kommt als Sammelmeldung.",
        "notice.rotation_heading": "SICHERHEIT: Gerät {uid} wechselt Fehlercodes",
        "notice.rotation_html": "Es ist nicht gesperrt: Seine E-Mails bleiben im Kontingent, "
        "der Rest kommt als Sammelmeldung.",
        "notice.security": "SICHERHEIT: faultmail hat Gerät {uid} auf Gateway {gateway} gesperrt.",
        "notice.security_heading": "SICHERHEIT: Gerät {uid} gesperrt",
        "notice.blocked": "Gerät {uid} ist auf Gateway {gateway} GESPERRT: Seine Meldungen "
        "werden nicht gemailt, bis ein Techniker es entsperrt.",
        "notice.blocked_heading": "Gerät {uid} ist gesperrt",
        "notice.blocked_html": "Seine Meldungen werden nicht gemailt, bis ein Techniker es "
        "entsperrt.",
        "notice.gateway": "Gateway {gateway}.",
        "label.uid": "Geräte-UID",
        "label.topic": "Topic",
        "label.reason": "Grund",
        "label.first_code": "Erster Code",
        "label.detected": "Erkannt",
        "label.flood_started": "Flut begann",
        "label.blocked_at": "Gesperrt",
        "label.rate": "Beobachtete Rate",
        "label.publisher": "Absender",
        "notice.rate": "{rate} Nachrichten/s ({messages})",
        "notice.rate_window": "{rate} Nachrichten/s ({messages} im Zeitfenster)",
        "notice.publisher": "MQTT verrät Abonnenten nicht, welcher Client veröffentlicht hat; "
        "das Broker-Log zeigt die Client-ID, die auf {topic} veröffentlicht.",
        "notice.first_codes": "Die ersten gesendeten Codes",
        "notice.samples": "Beispiel-Payloads (maskiert, gekürzt)",
        "notice.samples_html": "Beispiel-Payloads",
        "notice.counters": "Seine Zähler, `suspicious` erhöht",
        "notice.stop": "Nach Prüfung keine E-Mails mehr",
        "notice.while_blocked": "Solange es gesperrt ist, werden seine Nachrichten nur "
        "bestätigt und gezählt ({command}).",
        "notice.unblock": "Nach Prüfung entsperren",
        "reason.flood": "mehr als {threshold} Nachrichten innerhalb von {window} s",
        "reason.rotation": "Codewechsel: {codes} verschiedene Fehlercodes innerhalb von "
        "{window} s (Grenze {limit}); nicht gesperrt, seine E-Mails sind auf {budget} pro "
        "{window} s begrenzt, der Rest als Sammelmeldung",
        "cause.suspicious": "verdächtig",
        "subject.silence": "[STUMMGESCHALTET] {scope} auf {gateway} bis {until} (von {author})",
        "subject.silence_ended": "[STUMMSCHALTUNG BEENDET] {scope} auf {gateway}: "
        "währenddessen {alerts}, {active}",
        "silence.scope": "Gerät {device}",
        "silence.scope_code": ", Code {code}",
        "silence.started": "Meldungen für {scope} auf Gateway {gateway} sind stummgeschaltet: "
        "Sie werden gespeichert (Status `silenced`), aber nicht per E-Mail verschickt, bis die "
        "Stummschaltung endet.",
        "silence.ended": "Die Stummschaltung für {scope} auf Gateway {gateway} ist beendet.",
        "silence.label.id": "Stummschaltung Nr.",
        "silence.label.scope": "Bereich",
        "silence.label.author": "Angelegt von",
        "silence.label.reason": "Grund",
        "silence.label.from": "Von",
        "silence.label.until": "Bis",
        "silence.label.ended": "Beendet",
        "silence.expired": "abgelaufen",
        "silence.summary": "Was währenddessen geschah:",
        "silence.no_alerts": "Währenddessen kamen keine Meldungen.",
        "silence.row": "{uid} {code} ({severity}): {count}, {first} bis {last}, "
        "zuletzt {state}: {message}",
        "silence.state.active": "aktiv",
        "silence.state.resolved": "behoben",
        "silence.still_active": "Noch aktiv, jetzt als aktive Meldungen verschickt:",
        "silence.active_item": "{uid} {code} (Meldung {id})",
        "silence.end_early": "Vorzeitig beenden:  {command}",
    },
}

# Grouping and decimal separators (CLDR): Czech groups with a no-break space. English keeps
# the ungrouped numbers its mails always had ("10000 alerts"): filters may match them.
_SEPARATORS = {"en": ("", "."), "cs": ("\u00a0", ","), "de": (".", ",")}
# Only these do not decompose under NFKD; everything else non-ASCII becomes "?".
_ASCII_EXTRA = {
    "ß": "ss",
    "ẞ": "SS",
    "ø": "o",
    "Ø": "O",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "æ": "ae",
    "Æ": "AE",
    "œ": "oe",
    "Œ": "OE",
    "€": "EUR",
    "–": "-",
    "—": "-",
    "„": '"',
    "“": '"',
    "”": '"',
    "‚": "'",
    "‘": "'",
    "’": "'",
    "×": "x",
}


def plural_index(lang: str, count: float) -> int:
    """Which form a count takes: 0 one, 1 few (Czech 2-4), then other (CLDR rules)."""
    whole = count == int(count)
    if lang == "cs":
        if whole and count == 1:
            return 0
        if whole and 2 <= count <= 4:
            return 1
        return 2
    return 0 if count == 1 else 1


def plural(lang: str, count: float, forms: tuple[str, ...]) -> str:
    """The form of `forms` that `count` takes in lang (a shorter tuple: its last form)."""
    return forms[min(plural_index(lang, count), len(forms) - 1)]


def n(lang: str, noun: str, count: float) -> str:
    """The count with its noun: n("cs", "occurrence", 5) → "5 výskytů"."""
    forms = NOUNS[noun].get(lang) or NOUNS[noun]["en"]
    return f"{number(lang, count)} {plural(lang, count, forms)}"


def number(lang: str, value: float) -> str:
    """A number as the locale writes it: thousands grouped, decimal comma in cs and de."""
    group, point = _SEPARATORS.get(lang, _SEPARATORS["en"])
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.10g}"
    if "e" in text:  # very large or small floats stay in exponent form
        return text
    return text.replace(",", "\0").replace(".", point).replace("\0", group)


def t(lang: str, key: str, **values: Any) -> str:
    """The catalogue text for key in lang (English if lang lacks it), formatted with values.

    An int or float value is written by number(); bools and strings pass unchanged.
    """
    text = CATALOGUE.get(lang, {}).get(key) or CATALOGUE["en"][key]
    shown = {
        k: number(lang, v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in values.items()
    }
    return text.format(**shown)


def datetime_text(lang: str, ts: float, zone: tzinfo) -> str:
    """A moment as the locale writes it, with the zone's abbreviation."""
    moment = datetime.fromtimestamp(ts, zone)
    if lang == "cs":
        return f"{moment.day}. {moment.month}. {moment.year} {moment:%H:%M %Z}"
    if lang == "de":
        return moment.strftime("%d.%m.%Y %H:%M %Z")
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


_UNITS = {
    "en": ("{}s", "{}m", "{}h {}m", "{}d {}h"),
    "cs": ("{} s", "{} min", "{} h {} min", "{} d {} h"),
    "de": ("{} s", "{} Min.", "{} Std. {} Min.", "{} Tg. {} Std."),
}


def duration(lang: str, seconds: float) -> str:
    """A human duration: 45s, 12m, 3h 12m, 2d 4h (cs: 3 h 12 min; de: 3 Std. 12 Min.)."""
    sec, mins, hours, days = _UNITS.get(lang, _UNITS["en"])
    s = int(seconds)
    if s < 60:
        return sec.format(s)
    if s < 3600:
        return mins.format(s // 60)
    if s < 86400:
        return hours.format(s // 3600, s % 3600 // 60)
    return days.format(s // 86400, s % 86400 // 3600)


def ascii_fold(text: str) -> str:
    """ASCII only, for ticketing systems that parse subjects: "Přetlak" → "Pretlak".

    NFKD splits a letter from its accents, which are then dropped; the few letters that do not
    decompose (ß, ø, ł, æ, …) have a spelling of their own; anything else becomes "?".
    """
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if ch.isascii():
            out.append(ch)
        elif unicodedata.combining(ch):
            continue
        else:
            out.append(_ASCII_EXTRA.get(ch, "?"))
    return "".join(out)
