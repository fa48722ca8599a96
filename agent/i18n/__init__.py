"""Mail in the reader's language (`mail.language`: "en", "cs" or "de").

Every fixed string of a mail (subjects, text and HTML bodies, notices, digests, follow-ups)
lives in CATALOGUE, one entry per language, written as a native speaker would put it rather
than word for word (en.py, cs.py, de.py; the nouns in catalogue.py).
The API, for agent/compose/ and for any module that writes mail:

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

from agent.i18n.catalogue import CATALOGUE, LANGUAGES, NOUNS
from agent.i18n.formatting import (
    ascii_fold,
    datetime_text,
    duration,
    n,
    number,
    plural,
    plural_index,
    t,
)

__all__ = [
    "CATALOGUE",
    "LANGUAGES",
    "NOUNS",
    "ascii_fold",
    "datetime_text",
    "duration",
    "n",
    "number",
    "plural",
    "plural_index",
    "t",
]
