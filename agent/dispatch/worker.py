"""The outbox's own thread for the event loop: SQLite work never blocks asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from agent.outbox import Outbox

T = TypeVar("T")


class OutboxWorker:
    """Runs outbox calls on one dedicated thread so SQLite never blocks the event loop."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    async def __call__(self, fn: Callable[[Outbox], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, self.outbox)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self.outbox.close()
