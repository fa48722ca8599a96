"""German texts of every fixed string in a mail.

Written as a German-speaking engineer would put it, not word for word.
"""

TEXTS: dict[str, str] = {
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
    "notice.blocked_html": "Seine Meldungen werden nicht gemailt, bis ein Techniker es entsperrt.",
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
}
