"""Mail from alerts: text + HTML from templates, threading, and headers set only through the
email package's header API, never by string concatenation.

    mail        compose(): the entry point, one EmailMessage per outbox mail
"""

from agent.compose.mail import (
    DEFAULT_SUBJECT,
    LATE_AFTER_S,
    NOTICE_KINDS,
    POLICY,
    SUBJECT_MAX_CHARS,
    ComposeContext,
    compose,
    id_ranges,
    load_templates,
    parse_id_ranges,
    runbook_link,
    subject_for,
    subject_header,
    translated_reason,
    waited,
)

__all__ = [
    "DEFAULT_SUBJECT",
    "LATE_AFTER_S",
    "NOTICE_KINDS",
    "POLICY",
    "SUBJECT_MAX_CHARS",
    "ComposeContext",
    "compose",
    "id_ranges",
    "load_templates",
    "parse_id_ranges",
    "runbook_link",
    "subject_for",
    "subject_header",
    "translated_reason",
    "waited",
]
