"""The ``with`` protocol shared by the harness's servers (broker, relay, daemon)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """A server the harness starts and closes: ``with Server(...) as server:`` calls `start`
    on entry and `close` on exit, whatever the block raised."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
