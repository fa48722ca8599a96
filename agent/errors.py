"""Our exceptions, grouped by how the caller reacts to them.

Library exceptions (sqlite3, aiosmtplib, paho) are translated into these once, at the module
that talks to the library, and never travel further.
"""

from __future__ import annotations


class FaultmailError(Exception):
    """Base of every error faultmail raises on purpose."""


class ConfigError(FaultmailError):
    """The configuration cannot be used: startup stops with a message naming the key and the fix."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"  {key}: {text}" for key, text in problems]
        super().__init__("invalid configuration:\n" + "\n".join(lines))


class RejectedInput(FaultmailError):
    """A payload that cannot become an alert: the reason is recorded, the daemon carries on."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class PolicyRefusal(FaultmailError):
    """Policy forbids the action (e.g. a recipient outside the allowlist): never retried."""


class DeliveryError(FaultmailError):
    """A mail could not be handed to the relay. `retryable` says whether trying again can help."""

    retryable: bool = False

    def __init__(
        self, step: str, detail: str, *, code: int | None = None, kind: str = "smtp"
    ) -> None:
        self.step = step
        self.detail = detail
        self.code = code
        # kind groups failures for audit and metrics: connect, tls, auth, timeout, smtp, policy
        self.kind = kind
        prefix = f"{step}: {code} " if code else f"{step}: "
        super().__init__(prefix + detail)


class TransientDeliveryError(DeliveryError):
    """Relay down, 4xx, timeout, TLS or AUTH trouble: the mail stays pending and is retried."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """5xx for the whole mail, or a policy refusal: the mail is dead, with the reason recorded."""

    retryable = False


class OutboxError(FaultmailError):
    """The outbox database could not do what was asked."""


class OutboxUnavailable(OutboxError):
    """Storage is temporarily unusable (disk full, read-only, locked): stop acking, retry later."""


class OutboxFull(OutboxUnavailable):
    """The outbox reached a cap that only delivery can relieve: ingest pauses, nothing is lost."""


class OutboxCorrupt(OutboxError):
    """The database file is damaged or not ours: refuse to start with instructions."""


class LeaseLost(FaultmailError):
    """Another group member holds the standby lease while this one was active (agent.group)."""
