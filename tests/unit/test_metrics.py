"""Metrics: counters that the intake thread and the event loop add to at once."""

from __future__ import annotations

import threading

from agent.metrics import Metrics


def test_counts_from_many_threads_are_not_lost() -> None:
    """Concurrent add() calls from several threads sum exactly, per (name, label)."""
    metrics = Metrics()

    def add_many() -> None:
        for _ in range(1000):
            metrics.add("alerts_received", "accepted")
            metrics.add("mails", "sent", 2)

    threads = [threading.Thread(target=add_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.snapshot() == {("alerts_received", "accepted"): 4000, ("mails", "sent"): 8000}


def test_snapshot_is_a_copy() -> None:
    """A snapshot does not change when counting goes on."""
    metrics = Metrics()
    metrics.add("mails", "sent")
    snap = metrics.snapshot()
    metrics.add("mails", "sent")
    assert snap == {("mails", "sent"): 1}
