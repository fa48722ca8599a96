"""What every mail needs besides its alerts, fixed at startup: the context and its templates."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import jinja2

from agent import i18n
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.settings import Settings

DEFAULT_SUBJECT = "[{severity}] {device} {code}: {message}"
TEMPLATE_NAMES = ("mail.txt.j2", "mail.html.j2", "notice.txt.j2", "notice.html.j2")


def load_templates(override_dir: str = "", language: str = "en") -> jinja2.Environment:
    """The shipped templates, or an admin's copies (same file names): override_dir/<language>/
    first, then override_dir itself, then the shipped ones.

    The shipped templates take every fixed string from agent.i18n: `t`, `n` and `number` are
    bound to the language (see that module); `label` holds the fact labels ("Device" and so
    on) and `field` the text mail's, padded to one width (FIELD_LABELS): worked out once per
    language instead of looked up on every mail. HTML is autoescaped: device text cannot add
    markup, also inside a translated sentence. The text template is not escaped.
    """
    loaders: list[jinja2.BaseLoader] = []
    if override_dir:
        loaders.append(jinja2.FileSystemLoader(str(Path(override_dir) / language)))
        loaders.append(jinja2.FileSystemLoader(override_dir))
    loaders.append(jinja2.PackageLoader("agent", "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False
        ),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        # Templates are read once; an admin's edit takes a restart like every other setting
        # (and no stat() per mail).
        auto_reload=False,
    )
    env.globals.update(
        field=_field_labels(language),
        label={key: i18n.t(language, f"label.{key}") for key in (*FIELD_LABELS, "details")},
        t=functools.partial(i18n.t, language),
        n=functools.partial(i18n.n, language),
        number=functools.partial(i18n.number, language),
        language=language,
    )
    # Compiled now, not at first use: that would put a tenth of a second on the first mail
    # (and an admin's syntax error on a mail instead of on startup, see from_settings).
    for name in TEMPLATE_NAMES:
        template = env.get_template(name)
        # Jinja keeps a template's globals as a ChainMap over the environment's, and copies
        # them into a new dict on every render, key by key in Python: 5 µs a render. Nothing
        # changes them after this point, so each template gets a plain copy.
        template.globals = dict(template.globals)
    return env


# The labels of the text mail's fact block, padded to the widest (at least 14 columns) so that
# the values line up: the same for every mail in a language, so worked out once.
FIELD_LABELS = (
    "device",
    "gateway",
    "severity",
    "code",
    "device_time",
    "received",
    "sequence",
    "runbook",
)


def _field_labels(language: str) -> dict[str, str]:
    texts = {key: i18n.t(language, f"label.{key}") + ":" for key in FIELD_LABELS}
    width = max(14, *(len(text) + 1 for text in texts.values()))
    return {key: text.ljust(width) for key, text in texts.items()}


@dataclass(frozen=True)
class ComposeContext:
    """What every mail needs besides its alerts, fixed at startup."""

    sender: str
    gateway_id: str
    site: str
    # Alerts older than this go out marked [STALE].
    stale_after: float = 3 * 24 * 3600.0
    subject_format: str = DEFAULT_SUBJECT
    timezone: str = "UTC"
    runbooks: dict[str, str] = field(default_factory=dict)
    runbook_default: str = ""
    templates: jinja2.Environment = field(default_factory=load_templates)
    # mail.language: the fixed strings, dates and numbers of every mail (agent.i18n). Build
    # with templates=load_templates(dir, language) or from_settings.
    language: str = "en"
    # mail.ascii_subject: subjects transliterated to ASCII for ticketing systems.
    ascii_subject: bool = False

    @functools.cached_property
    def zone(self) -> ZoneInfo:
        """mail.timezone, looked up once per context rather than once per mail."""
        return ZoneInfo(self.timezone)

    @property
    def gateway_site(self) -> str:
        """The gateway as mails name it: "gw-1 (Brno)", or just its id without a site."""
        return f"{self.gateway_id} ({self.site})" if self.site else self.gateway_id

    @classmethod
    def from_settings(cls, settings: Settings) -> ComposeContext:
        """The context the daemon uses; send-test uses the same, so its mail looks the same."""
        mail = settings.mail
        try:
            templates = load_templates(mail.templates_dir, mail.language)
        except jinja2.TemplateError as exc:
            where = getattr(exc, "filename", None) or getattr(exc, "name", None) or "a template"
            line = getattr(exc, "lineno", None)
            at = f"{where}, line {line}" if line else where
            raise ConfigError(
                [
                    (
                        "mail.templates_dir",
                        f"{at}: {exc.message or type(exc).__name__}; fix the template, or "
                        "remove it to use the shipped one",
                    )
                ]
            ) from None
        return cls(
            sender=settings.smtp.sender,
            gateway_id=settings.gateway.id,
            site=settings.gateway.site,
            stale_after=settings.delivery.max_age,
            subject_format=mail.subject_format,
            timezone=mail.timezone,
            runbooks=dict(mail.runbooks),
            runbook_default=mail.runbook_default,
            templates=templates,
            language=mail.language,
            ascii_subject=mail.ascii_subject,
        )
