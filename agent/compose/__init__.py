"""Mail from alerts: text + HTML from templates, threading, and headers set only through the
email package's header API, never by string concatenation.

    context     ComposeContext (what every mail needs besides its alerts), load_templates
    headers     the policy, shared header objects, the headers every mail has
    mime        Composed: the mail's headers and multipart/alternative body, and its bytes
    subjects    subjects: alert, follow-up and digest, the severity tag, header-safe and cut
    values      what the templates render: alert views, digest summaries, ids, runbook link
    notices     security, block and silence notices; stored reasons in the mail's language
    mail        compose(): the entry point, one Composed mail per outbox mail
"""

from agent.compose.context import DEFAULT_SUBJECT, ComposeContext, load_templates
from agent.compose.headers import POLICY
from agent.compose.mail import NOTICE_KINDS, compose
from agent.compose.mime import Composed
from agent.compose.notices import translated_reason
from agent.compose.subjects import SUBJECT_MAX_CHARS, subject_for, subject_header
from agent.compose.values import LATE_AFTER_S, id_ranges, parse_id_ranges, runbook_link, waited

__all__ = [
    "DEFAULT_SUBJECT",
    "LATE_AFTER_S",
    "NOTICE_KINDS",
    "POLICY",
    "SUBJECT_MAX_CHARS",
    "ComposeContext",
    "Composed",
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
