"""What each stage of the pipeline is really doing, for the watchdog, `status` and metrics.

Every long-running stage (the MQTT client, the intake thread, the delivery task, the outbox
worker) owns a `Stage` and calls `beat()` whenever it makes progress and at least every
`HEARTBEAT_S` while idle. A stage that dies calls `failed(exc)`: the supervisor in `app` is told
at once and takes the process down, so systemd restarts it instead of pinging the watchdog for
a daemon that no longer stores or sends anything. Nothing else would notice: an uncaught
exception ends a thread quietly, and an asyncio task's exception surfaces only when the task is
awaited.

Durations are on the monotonic clock: a wall-clock step must not make a stage look stalled.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# How often an idle stage says it is still there; stalls are judged against a multiple of it.
HEARTBEAT_S = 5.0


class StageState(enum.StrEnum):
    STARTING = "starting"
    ALIVE = "alive"
    STALLED = "stalled"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class StageReport:
    """One stage as `status`, the metrics and the retained MQTT status show it."""

    name: str
    state: StageState
    silent_s: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "silent_s": round(self.silent_s, 1),
            "error": self.error,
        }


class Stage:
    """One stage's liveness: thread-safe, cheap enough to call per message."""

    def __init__(
        self,
        name: str,
        *,
        stall_after: float = 6 * HEARTBEAT_S,
        on_failure: Callable[[Stage, BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.stall_after = stall_after
        self._clock = clock
        self._on_failure = on_failure
        self._last = clock()
        self._started = False
        self._stopped = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def beat(self) -> None:
        """Progress, or an idle heartbeat."""
        self._last = self._clock()
        self._started = True

    def stopped(self) -> None:
        """The stage ended on purpose (shutdown): not a failure, no longer expected to beat."""
        self._stopped = True

    def failed(self, exc: BaseException) -> None:
        """The stage died of `exc`: recorded, and the supervisor is told (once)."""
        with self._lock:
            if self._error is not None:
                return
            self._error = exc
        if self._on_failure is not None:
            self._on_failure(self, exc)

    @property
    def error(self) -> BaseException | None:
        return self._error

    def report(self) -> StageReport:
        silent = max(0.0, self._clock() - self._last)
        if self._error is not None:
            err = self._error
            return StageReport(self.name, StageState.DEAD, silent, f"{type(err).__name__}: {err}")
        if self._stopped:
            return StageReport(self.name, StageState.STOPPED, silent)
        if silent > self.stall_after:
            return StageReport(self.name, StageState.STALLED, silent)
        return StageReport(
            self.name, StageState.ALIVE if self._started else StageState.STARTING, silent
        )


class Liveness:
    """The stages of one daemon; `healthy()` gates the systemd watchdog."""

    def __init__(
        self,
        on_failure: Callable[[Stage, BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stages: dict[str, Stage] = {}
        self._on_failure = on_failure
        self._clock = clock

    def stage(self, name: str, *, stall_after: float = 6 * HEARTBEAT_S) -> Stage:
        stage = Stage(name, stall_after=stall_after, on_failure=self._failed, clock=self._clock)
        self._stages[name] = stage
        return stage

    def _failed(self, stage: Stage, exc: BaseException) -> None:
        if self._on_failure is not None:
            self._on_failure(stage, exc)

    def reports(self) -> list[StageReport]:
        return [stage.report() for stage in self._stages.values()]

    def healthy(self) -> bool:
        """Every stage alive (or still starting): only then may the watchdog be pinged."""
        return all(r.state in (StageState.ALIVE, StageState.STARTING) for r in self.reports())

    def summary(self) -> dict[str, dict[str, object]]:
        return {r.name: r.as_dict() for r in self.reports()}
