"""submit: the allowlist is checked again right before RCPT TO, without touching the network."""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import PolicyRefusal
from agent.settings import Allowlist, Settings
from agent.submit import SmtpSubmitter


def test_recipient_outside_allowlist_is_refused_before_connecting(settings: Settings) -> None:
    """A queued mail for an address no longer allowlisted is refused; no connection is made."""
    # mail.example.com does not resolve here: reaching the network would raise something else.
    sub = SmtpSubmitter(settings.smtp, Allowlist(["example.com"], []), "gw.test")
    with pytest.raises(PolicyRefusal, match=r"evil@other\.test"):
        asyncio.run(sub.submit("gw@example.com", ["ops@example.com", "evil@other.test"], b"x"))
