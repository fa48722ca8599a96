"""The delivery lanes of a pass: up to smtp.connections mails in flight, one relay connection
each, and the lanes a slow reply keeps busy after their pass.

A pass waits for its lanes, so that their outcomes share commits and the next pass plans what
arrived meanwhile. It must not wait for one slow reply, though: a relay may take
smtp.data_timeout (120 s) to answer the end of DATA, or smtp.timeout (30 s) each command, and
every alert, critical ones too, waited that long although the other connections were free.
Once the pass hands out nothing more, a lane still busy after STRAGGLER_S is left to finish
its mail alone: the next passes run on the other lanes and never claim a mail in flight, and
the loop is woken when it finishes, to use its connection again.

A lane left behind no longer holds the loop, so the loop's heartbeat no longer shows it: one
still busy after `hung_after` (the delivery stage's stall limit, which covers every SMTP
timeout) is reported through `on_hung`, and the stage fails, instead of a connection lost
for good while health says OK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

# How long a pass that hands out nothing more waits for its last replies before it goes on
# without them (each mail takes a few ms; a reply this late is a relay that is slow now).
STRAGGLER_S = 0.5


class LaneBatch(Protocol):
    """What the lanes of a pass share (agent.dispatch.loop._Batch)."""

    @property
    def error(self) -> BaseException | None:
        """The outbox error that halted the batch, if any."""

    @property
    def drained(self) -> asyncio.Event:
        """Set once the last mail was handed out."""

    def close(self) -> None:
        """Hand out nothing more: a lane still busy stops after its mail."""


class Lanes:
    """The lanes of the current pass and those left behind. Event loop only."""

    def __init__(
        self,
        size: int,
        wake: Callable[[], None],
        *,
        hung_after: float,
        on_hung: Callable[[BaseException], None],
    ) -> None:
        self.size = size
        # Ids of the mails being delivered: a claim must not hand any of them out again.
        self.in_flight: set[int] = set()
        self._left: dict[asyncio.Task[None], asyncio.TimerHandle] = {}
        self._error: BaseException | None = None
        self._wake = wake
        self._hung_after = hung_after
        self._on_hung = on_hung

    @property
    def free(self) -> int:
        """Lanes a new pass may use: those not finishing a mail of an earlier pass."""
        return self.size - len(self._left)

    def raise_left_error(self) -> None:
        """What a lane left behind ended with (an outbox error, a bug), raised once."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def run(self, batch: LaneBatch, lane: Callable[[], Awaitable[None]], n: int) -> None:
        """Run n lanes over the batch until it hands out nothing more and each lane has
        finished its mail, or STRAGGLER_S after that; a lane still busy then is left behind."""
        if n <= 0:
            return
        tasks = {asyncio.ensure_future(lane()) for _ in range(n)}
        drained = asyncio.ensure_future(batch.drained.wait())
        try:
            # Until the last mail is handed out or a lane returns (it returns only when the
            # batch hands out nothing more): from then on each lane is on its last mail.
            await asyncio.wait(tasks | {drained}, return_when=asyncio.FIRST_COMPLETED)
            done, running = await asyncio.wait(tasks, timeout=STRAGGLER_S)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        finally:
            drained.cancel()
        if running:
            batch.close()
            # The pass reports the batch's error as it is now; a lane left behind, its own.
            seen = batch.error
            loop = asyncio.get_running_loop()
            for task in running:
                self._left[task] = loop.call_later(self._hung_after, self._hung, task)
                task.add_done_callback(lambda t: self._finished(t, batch, seen))
        for task in done:
            task.result()  # a lane handles each mail's errors; what escapes is a bug

    def _finished(
        self, task: asyncio.Task[None], batch: LaneBatch, seen: BaseException | None
    ) -> None:
        timer = self._left.pop(task, None)
        if timer is not None:
            timer.cancel()
        if not task.cancelled():
            error = task.exception() or (batch.error if batch.error is not seen else None)
            if error is not None and self._error is None:
                self._error = error
        self._wake()

    def _hung(self, task: asyncio.Task[None]) -> None:
        if not task.done():
            seconds = self._hung_after + STRAGGLER_S
            self._on_hung(
                RuntimeError(
                    f"a delivery lane has been busy with one mail for over {seconds:.0f} s, "
                    "longer than the SMTP timeouts allow: its relay connection is stuck"
                )
            )

    async def settle(self) -> None:
        """At shutdown: the lanes left behind finish their mails (each bounded by the SMTP
        timeouts), so that what the relay took is recorded before the connections close."""
        if self._left:
            await asyncio.wait(set(self._left))
