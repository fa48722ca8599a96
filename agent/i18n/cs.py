"""Czech texts of every fixed string in a mail.

Written as a Czech engineer would put it (diacritics, three plural forms), not word for word.
"""

TEXTS: dict[str, str] = {
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
}
