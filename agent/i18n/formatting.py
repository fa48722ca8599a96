"""Texts, counts, numbers, dates and durations as the reader's locale writes them."""

from __future__ import annotations

import functools
import math
import unicodedata
from datetime import datetime, tzinfo
from typing import Any

from agent.i18n.catalogue import CATALOGUE, NOUNS

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
    # To the second: a burst writes the same few seconds into many mails.
    return _second_text(lang, math.floor(ts), zone)


@functools.lru_cache(maxsize=64)
def _second_text(lang: str, second: int, zone: tzinfo) -> str:
    moment = datetime.fromtimestamp(second, zone)
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
