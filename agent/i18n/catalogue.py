"""What a mail may say: the nouns with their plural forms and the texts per language."""

from agent.i18n import cs, de, en

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

# A key missing from a language falls back to English (see t()).
CATALOGUE: dict[str, dict[str, str]] = {"en": en.TEXTS, "cs": cs.TEXTS, "de": de.TEXTS}
