"""Poison messages: what the intake was handling when it died, and what to do when it is back.

A message that kills the intake thread would kill it again after every restart, because the
broker redelivers what was not acknowledged. So a death is written down first: the
fingerprints of the messages at hand go to the outbox's poison list. After a restart a batch
holding a message seen at an earlier death is handled one message at a time, so a second death
is blamed on the one message that caused it, not on its neighbours; a message present at
QUARANTINE_AFTER deaths is stored as rejected `quarantined` and acknowledged instead.
"""

from __future__ import annotations

import hashlib
import time

import structlog

from agent.errors import OutboxCorrupt, OutboxError
from agent.models import Decision, RawMessage, Reason
from agent.outbox import Outbox
from agent.sanitize import escaped_sample, truncate

# Intake deaths a message may be present at before it is quarantined. Two, not one: the first
# death blames every message of the batch; the retry handles each alone, so the second death
# names the culprit.
QUARANTINE_AFTER = 2
# Characters of a payload quoted, escaped, in the log line of a message that failed.
LOG_SAMPLE_CHARS = 200

# fingerprint → (deaths it was present at, the error of the last one)
Deaths = dict[str, tuple[int, str]]


def fingerprint(raw: RawMessage) -> str:
    """What identifies a redelivered message across restarts (packet ids are reused)."""
    digest = hashlib.sha256(raw.topic.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(raw.payload)
    return digest.hexdigest()


class PoisonList:
    """The intake's view of the outbox's poison list (on the intake thread only)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        # Unknown until the first batch asks the outbox; False spares every later batch the
        # lookup (only a death adds entries, and a death ends this process).
        self._seen: bool | None = None
        self.log = structlog.get_logger("faultmail.intake")

    def deaths(self, batch: list[RawMessage]) -> Deaths:
        """Earlier intake deaths of these messages; one indexed lookup, and none at all
        while the poison list is empty."""
        try:
            if self._seen is None:
                self._seen = self._outbox.has_poison()
            if not self._seen:
                return {}
            return self._outbox.poison_deaths([fingerprint(raw) for raw in batch])
        except OutboxCorrupt:
            raise
        except OutboxError as exc:
            # Unreadable now: handle the batch as if nothing were known (the worst case is
            # the death the list exists to prevent, and the next start retries the lookup).
            self.log.warning("poison_list_unreadable", error=str(exc))
            return {}

    @staticmethod
    def suspects(batch: list[RawMessage], deaths: Deaths) -> bool:
        """True when a batch of several holds a message seen at a death but not convicted:
        it is then handled one message at a time."""
        return len(batch) > 1 and any(n < QUARANTINE_AFTER for n, _ in deaths.values())

    @staticmethod
    def convicted(raw: RawMessage, deaths: Deaths) -> tuple[int, str] | None:
        """(deaths, error) when `raw` was present at QUARANTINE_AFTER deaths or more."""
        known = deaths.get(fingerprint(raw)) if deaths else None
        return known if known is not None and known[0] >= QUARANTINE_AFTER else None

    def quarantine(self, raw: RawMessage, uid: str | None, deaths: int, error: str) -> Decision:
        """The decision for a convicted message: rejected, stored, acknowledged."""
        self.log.error(
            "message_quarantined",
            topic=raw.topic,
            deaths=deaths,
            error=error,
            sample=escaped_sample(raw.payload, LOG_SAMPLE_CHARS),
            fix="report it with this sample: faultmail has a bug this payload triggers",
        )
        return Decision.rejected(
            raw,
            Reason.QUARANTINED,
            f"the intake died {deaths} times while handling it ({error}); "
            "acknowledged so it cannot stop ingest again",
            uid,
        )

    def record_death(self, batch: list[RawMessage], exc: BaseException) -> None:
        """Blame the messages at hand for the death `exc` (never raises)."""
        if not batch or isinstance(exc, OutboxCorrupt):
            # A damaged database is not the messages' fault: blaming them would quarantine
            # innocent alerts once the file is repaired.
            return
        messages = {fingerprint(raw): raw.topic for raw in batch}
        try:
            self._outbox.record_poison(
                list(messages.items()),
                f"{type(exc).__name__}: {truncate(str(exc), 200)}",
                time.time(),
            )
        except Exception:
            self.log.exception("poison_not_recorded", count=len(messages))
