"""i18n: complete catalogues, plural rules, locale dates and numbers, ASCII folding."""

from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path
from zoneinfo import ZoneInfo

from agent import i18n


def test_every_key_and_noun_in_every_language() -> None:
    """No language lacks a key or a plural noun, nor uses a placeholder English does not fill."""
    english = i18n.CATALOGUE["en"]
    for lang in i18n.LANGUAGES:
        assert set(i18n.CATALOGUE[lang]) == set(english), lang
        for key, text in i18n.CATALOGUE[lang].items():
            fields = set(re.findall(r"\{(\w+)\}", text))
            assert fields <= set(re.findall(r"\{(\w+)\}", english[key])), (lang, key)
    for noun, forms in i18n.NOUNS.items():
        assert len(forms["cs"]) == 3 and len(forms["en"]) == 2 and len(forms["de"]) == 2, noun


def test_templates_use_only_known_keys() -> None:
    """Every t("…") and n("…") in the shipped templates names an existing key or noun."""
    templates = Path(i18n.__file__).parents[1] / "templates"
    for path in templates.glob("*.j2"):
        text = path.read_text(encoding="utf-8")
        for key in re.findall(r'\bt\("([\w.]+)"\s*[,)]', text):
            assert key in i18n.CATALOGUE["en"], (path.name, key)
        for severity in ("critical", "error", "warning", "info"):
            assert f"alert.{severity}" in i18n.CATALOGUE["en"]
        for noun in re.findall(r'\bn\("(\w+)"', text):
            assert noun in i18n.NOUNS, (path.name, noun)


def test_czech_plural_one_few_other() -> None:
    """Czech: 1 výskyt, 2-4 výskyty, 0 and 5+ výskytů; 21 is "other" too."""
    shown = [i18n.n("cs", "occurrence", k) for k in (0, 1, 2, 3, 4, 5, 21, 1000)]
    assert shown == [
        "0 výskytů",
        "1 výskyt",
        "2 výskyty",
        "3 výskyty",
        "4 výskyty",
        "5 výskytů",
        "21 výskytů",
        "1\u00a0000 výskytů",
    ]


def test_german_and_english_plural() -> None:
    """German and English have one and other: 1 Vorkommen / 2 Vorkommen, 1 alert / 2 alerts."""
    assert i18n.n("de", "occurrence", 1) == "1 Vorkommen"
    assert i18n.n("de", "occurrence", 2) == "2 Vorkommen"
    assert i18n.n("de", "alert", 1) == "1 Meldung" and i18n.n("de", "alert", 7) == "7 Meldungen"
    assert i18n.n("en", "alert", 1) == "1 alert" and i18n.n("en", "alert", 0) == "0 alerts"


def test_numbers_per_locale() -> None:
    """Decimal comma in cs and de, grouping by no-break space (cs) or dot (de); en unchanged."""
    assert i18n.number("cs", 1234.5) == "1\u00a0234,5"
    assert i18n.number("de", 1234.5) == "1.234,5"
    assert i18n.number("en", 12345) == "12345" and i18n.number("en", 12.5) == "12.5"
    assert i18n.t("cs", "notice.rate", rate=33.3, messages="100 zpráv") == "33,3 zpr./s (100 zpráv)"


def test_dates_per_locale() -> None:
    """cs: "1. 12. 2026 03:19", de: "01.12.2026 03:19", en: ISO with seconds; zone shown."""
    ts = 1_796_095_140.0  # 2026-12-01 03:19:00 UTC
    assert i18n.datetime_text("cs", ts, UTC) == "1. 12. 2026 03:19 UTC"
    assert i18n.datetime_text("de", ts, UTC) == "01.12.2026 03:19 UTC"
    assert i18n.datetime_text("en", ts, UTC) == "2026-12-01 03:19:00 UTC"
    assert i18n.datetime_text("cs", ts, ZoneInfo("Europe/Prague")) == "1. 12. 2026 04:19 CET"


def test_durations_per_locale() -> None:
    """A wait reads 3h 12m, 3 h 12 min, 3 Std. 12 Min."""
    assert i18n.duration("en", 3 * 3600 + 12 * 60) == "3h 12m"
    assert i18n.duration("cs", 3 * 3600 + 12 * 60) == "3 h 12 min"
    assert i18n.duration("de", 3 * 3600 + 12 * 60) == "3 Std. 12 Min."


def test_ascii_fold() -> None:
    """Accents are dropped, letters without a decomposition spelled out, the rest "?"."""
    assert i18n.ascii_fold("Přetlak čerpadla Žďár") == "Pretlak cerpadla Zdar"
    assert i18n.ascii_fold("Straße Łódź – 5 €") == "Strasse Lodz - 5 EUR"
    assert i18n.ascii_fold("温度") == "??"


def test_unknown_language_falls_back_to_english() -> None:
    """A key looked up in a language without it gives the English text, never an error."""
    assert i18n.t("xx", "label.device") == "Device"
