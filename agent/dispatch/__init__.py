"""Delivery: due mails from the outbox to the relay, each attempt recorded.

loop     plan → claim → lanes → idle until woken (agent.dispatch.loop.Dispatcher)
attempt  one mail: expire → compose → sign → submit → outcome (agent.dispatch.attempt)
gate     whether the relay may be used now: backoff, pause and probe, per-minute cap
worker   the outbox's own thread, so SQLite never blocks the event loop
"""

from agent.dispatch.attempt import MAX_INTERNAL_ERRORS
from agent.dispatch.gate import backoff
from agent.dispatch.loop import DispatchConfig, Dispatcher
from agent.dispatch.worker import OutboxWorker

__all__ = ["MAX_INTERNAL_ERRORS", "DispatchConfig", "Dispatcher", "OutboxWorker", "backoff"]
