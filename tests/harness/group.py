"""Several real daemons as one faultmail group ([cluster], issue 17) on one real broker.

A `Group` holds the members by instance name, each a `Daemon` with its own config file,
state directory and MQTT client id. What the group says about itself is read where the spec
puts it: the retained topics under ``faultmail/<group>/`` (status, lease, blocked, held) on
the broker, and each member's ``group.json`` in its state directory. `diagnostics` gathers
what a failing test should show: each member's exit code, its group.json, its warnings and
its group lines (lease, takeover, adoption, routing), and the tail of its log.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.daemon import Daemon
from tests.harness.publisher import BrokerAddress, Subscriber

GROUP = "brno-gw"

# Log words that mark the group runtime's own lines (the lead's event names are not fixed yet:
# match loosely, the excerpt is for a reader).
_GROUP_WORDS = ("group", "lease", "takeover", "adopt", "held", "route", "member", "standby")


def retained(
    broker: BrokerAddress, topic_filter: str, *, settle: float = 1.0, protocol: str = "5"
) -> dict[str, bytes]:
    """The retained messages matching topic_filter now, by topic (an empty retained message
    clears the topic at the broker, so a cleared topic is simply absent).

    The broker sends retained messages right after the SUBACK; `settle` seconds of quiet
    after the last one end the wait.
    """
    found: dict[str, bytes] = {}
    with Subscriber(broker, [topic_filter], persistent=False, protocol=protocol) as sub:
        while True:
            try:
                message = sub.get(timeout=settle)
            except queue.Empty:
                return found
            if message.retain:
                found[message.topic] = message.payload


def retained_json(broker: BrokerAddress, topic: str, *, settle: float = 0.5) -> Any:
    """The retained JSON document at topic, or None when nothing is retained there."""
    payload = retained(broker, topic, settle=settle).get(topic)
    return json.loads(payload) if payload else None


@dataclass
class Member:
    """One daemon of the group."""

    instance: str
    daemon: Daemon
    state_dir: Path

    def view(self) -> dict[str, Any] | None:
        """The member's group.json (None while it has not written one)."""
        try:
            value = json.loads((self.state_dir / "group.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def alerts(self) -> list[dict[str, Any]]:
        """`alerts --json` of this member's outbox (works on a dead member's state too)."""
        return self.daemon.alerts()


class Group:
    """The members of one group, in the order they were configured."""

    def __init__(self, broker: BrokerAddress, group: str, members: Iterable[Member]) -> None:
        self.broker = broker
        self.group = group
        self.members = {m.instance: m for m in members}

    def __getitem__(self, instance: str) -> Member:
        return self.members[instance]

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def running(self) -> list[Member]:
        return [m for m in self if m.daemon.running]

    def start(self, *instances: str, timeout: float = 20.0) -> None:
        """Start the named members (all when none is named), one after the other."""
        for instance in instances or tuple(self.members):
            self.members[instance].daemon.start(timeout)

    # -- what the group says about itself ------------------------------------------------------

    def topic(self, *parts: str) -> str:
        return "/".join(["faultmail", self.group, *parts])

    def lease(self) -> str | None:
        """The instance the retained lease names (standby mode), None when it is clear."""
        value = retained_json(self.broker, self.topic("lease"))
        return str(value["instance"]) if isinstance(value, dict) else None

    def status(self, instance: str) -> dict[str, Any] | None:
        """The retained status document of one member."""
        value = retained_json(self.broker, self.topic(instance, "status"))
        return value if isinstance(value, dict) else None

    def held(self) -> dict[str, bytes]:
        """Retained held records (accepted, not yet mailed alerts) of every member, by topic."""
        return retained(self.broker, self.topic("held", "#"))

    def blocked(self) -> dict[str, dict[str, Any]]:
        """Retained block records by device uid."""
        prefix = self.topic("blocked") + "/"
        return {
            topic.removeprefix(prefix): json.loads(payload)
            for topic, payload in retained(self.broker, self.topic("blocked", "#")).items()
        }

    def formed(self, instances: Iterable[str]) -> bool:
        """Every named member's group.json lists every named member online."""
        names = list(instances)
        for name in names:
            view = self.members[name].view() or {}
            seen = view.get("members") or {}
            if any((seen.get(other) or {}).get("state") != "online" for other in names):
                return False
        return True

    def wait_formed(self, instances: Iterable[str] | None = None, timeout: float = 20.0) -> None:
        """Wait until the named (default: running) members see each other online."""
        names = list(instances) if instances is not None else [m.instance for m in self.running()]
        wait_until(
            lambda: self.formed(names),
            timeout,
            lambda: f"members {names} to see each other online",
            self,
        )

    # -- for a failing test --------------------------------------------------------------------

    def diagnostics(self, lines: int = 25) -> str:
        """Per member: exit code, group.json, its warnings and group lines, its log tail."""
        out = []
        for member in self:
            dm = member.daemon
            state = "running" if dm.running else f"exited {dm.returncode}"
            out.append(f"--- {member.instance} ({state}) group.json: {member.view()}")
            picked = [
                json.dumps(record, sort_keys=True)
                for record in dm.log_records()
                if str(record.get("level", "")).lower() in {"warning", "error", "critical"}
                or any(word in str(record.get("event", "")).lower() for word in _GROUP_WORDS)
            ]
            out += [f"  {line}" for line in picked[-lines:]]
            out.append("  log tail:")
            out += [f"  {line}" for line in dm.log_tail(10).splitlines()]
        return "\n".join(out)


def wait_until(
    probe: Callable[[], object],
    timeout: float,
    what: Callable[[], str],
    group: Group | None = None,
    interval: float = 0.2,
) -> None:
    """Poll probe() until truthy; AssertionError naming `what` (and the group's state)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            detail = f"\n{group.diagnostics()}" if group is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what()}{detail}")
        time.sleep(interval)
