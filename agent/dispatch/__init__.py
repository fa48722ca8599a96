"""Delivery: due mails from the outbox to the relay, each attempt recorded.

loop     plan → claim → lanes → idle until woken (agent.dispatch.loop.Dispatcher)
idle     between passes: how long to sleep, the sleep, the relay probe, the idle close
attempt  one mail: expire → compose → sign → submit (agent.dispatch.attempt)
outcome  the attempt's outcome: sent / retry / dead, with its audit entry
alarm    the login alarm, told: started, ended, cleared at startup
gate     whether the relay may be used now: backoff, pause and probe, per-minute cap
worker   the outbox's own thread, so SQLite never blocks the event loop
"""

from agent.dispatch.gate import backoff
from agent.dispatch.loop import DispatchConfig, Dispatcher
from agent.dispatch.outcome import MAX_INTERNAL_ERRORS
from agent.dispatch.worker import OutboxWorker

__all__ = ["MAX_INTERNAL_ERRORS", "DispatchConfig", "Dispatcher", "OutboxWorker", "backoff"]
