"""Load generators: device faults on ``devices/{uid}/fault`` at QoS 1.

`Publishers` runs the publishing in child processes (multiprocessing, spawn): a paho client
costs CPU per message, and in the benchmark process it would share the GIL with the relay, whose
timestamps are the measurement. Each child owns some of the devices (one MQTT client per child),
connects, waits for the common start signal, publishes as fast as possible or paced, and waits
for every PUBACK. Everything is bounded: a child gives up after its timeout, the parent
terminates a child that does not report.

`PacedPublisher` publishes from this process at a low rate and records when each message left.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class LoadSpec:
    """total messages round-robin over uids; message i is seq (seq_start + i // len(uids)) of
    device uids[i % len(uids)], with code codes[(i // len(uids)) % len(codes)]."""

    uids: tuple[str, ...]
    total: int
    rate: float = 0.0  # overall messages per second; 0 = as fast as possible
    severity: str = "error"
    codes: tuple[str, ...] = ("E100",)
    seq_start: int = 1
    timeout: float = 120.0


def device_uids(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}-{n:03d}" for n in range(1, count + 1))


def fault_payload(code: str, severity: str, message: str, seq: int) -> bytes:
    return json.dumps(
        {"code": code, "severity": severity, "message": message, "seq": seq},
        separators=(",", ":"),
    ).encode()


def message_key(spec: LoadSpec, index: int) -> tuple[str, int]:
    """(device uid, seq) of message `index`: what the outbox stores for the alert."""
    n = len(spec.uids)
    return spec.uids[index % n], spec.seq_start + index // n


def message(spec: LoadSpec, index: int) -> tuple[str, bytes]:
    uid, seq = message_key(spec, index)
    code = spec.codes[(index // len(spec.uids)) % len(spec.codes)]
    return f"devices/{uid}/fault", fault_payload(code, spec.severity, f"bench {uid} #{seq}", seq)


def _client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def _connect(client: mqtt.Client, host: str, port: int, timeout: float = 10.0) -> None:
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise RuntimeError(f"no CONNACK from {host}:{port} within {timeout} s")


def _child(
    host: str,
    port: int,
    spec: LoadSpec,
    part: int,
    parts: int,
    go: Any,
    out: Any,
) -> None:
    """One publisher process: the devices with index % parts == part."""
    try:
        n = len(spec.uids)
        indices = [i for i in range(spec.total) if (i % n) % parts == part]
        messages = [message(spec, i) for i in indices]
        share = len(messages) / spec.total if spec.total else 0.0
        rate = spec.rate * share
        client = _client(f"bench-pub-{part}-{uuid.uuid4().hex[:6]}")
        _connect(client, host, port)
        out.put(("ready", part, None))
        if not go.wait(60):
            out.put(("error", part, "no start signal within 60 s"))
            return
        infos = []
        # When each message left (time.time() right before paho takes it, as PacedPublisher
        # does): the parent maps mails back to these for publish -> 250 latencies.
        sent_at: list[tuple[str, int, float]] = []
        first = time.time()
        started = time.monotonic()
        deadline = started + spec.timeout
        sent = 0
        while sent < len(messages) and time.monotonic() < deadline:
            if rate > 0:
                due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
                if due <= sent:
                    time.sleep(0.001)
                    continue
            else:
                due = len(messages)
            for i, (topic, payload) in zip(indices[sent:due], messages[sent:due], strict=True):
                uid, seq = message_key(spec, i)
                sent_at.append((uid, seq, time.time()))
                infos.append(client.publish(topic, payload, qos=1))
            sent = due
        last = time.time()
        acked = 0
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if info.is_published():
                acked += 1
        acked_at = time.time()
        client.disconnect()
        client.loop_stop()
        out.put(
            (
                "done",
                part,
                {
                    "first": first,
                    "last": last,
                    "acked_at": acked_at,
                    "sent": sent,
                    "acked": acked,
                    "sent_at": sent_at,
                },
            )
        )
    except Exception as exc:  # reported to the parent, which raises
        out.put(("error", part, f"{type(exc).__name__}: {exc}"))


@dataclass
class LoadResult:
    first: float  # time.time() of the first publish
    last: float  # of the last publish
    acked_at: float  # when the last PUBACK from the broker arrived
    sent: int
    acked: int
    # (device uid, seq) -> time.time() right before its publish
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def publish_rate(self) -> float:
        return self.sent / max(1e-9, self.last - self.first)


class Publishers:
    """Child processes publishing a LoadSpec; `start` connects them, `go` releases them."""

    def __init__(self, host: str, port: int, spec: LoadSpec, processes: int = 2) -> None:
        self.spec = spec
        parts = max(1, min(processes, len(spec.uids)))
        ctx = multiprocessing.get_context("spawn")
        self._go = ctx.Event()
        self._out: Any = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_child,
                args=(host, port, spec, part, parts, self._go, self._out),
                name=f"bench-publisher-{part}",
                daemon=True,
            )
            for part in range(parts)
        ]
        self.go_at: float | None = None

    def _get(self, timeout: float) -> tuple[str, int, Any]:
        try:
            item: tuple[str, int, Any] = self._out.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"a publisher process did not report within {timeout} s") from None
        if item[0] == "error":
            raise RuntimeError(f"publisher {item[1]}: {item[2]}")
        return item

    def start(self, timeout: float = 30.0) -> Publishers:
        for proc in self._procs:
            proc.start()
        for _ in self._procs:
            self._get(timeout)
        return self

    def go(self) -> float:
        self.go_at = time.time()
        self._go.set()
        return self.go_at

    def join(self, timeout: float | None = None) -> LoadResult:
        timeout = timeout if timeout is not None else self.spec.timeout + 30
        results = [self._get(timeout)[2] for _ in self._procs]
        for proc in self._procs:
            proc.join(5)
        return LoadResult(
            first=min(r["first"] for r in results),
            last=max(r["last"] for r in results),
            acked_at=max(r["acked_at"] for r in results),
            sent=sum(r["sent"] for r in results),
            acked=sum(r["acked"] for r in results),
            sent_at={(uid, seq): at for r in results for uid, seq, at in r["sent_at"]},
        )

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)

    def __enter__(self) -> Publishers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_all(host: str, port: int, spec: LoadSpec, processes: int = 2) -> LoadResult:
    """Publish the whole spec from child processes and wait for every PUBACK."""
    with Publishers(host, port, spec, processes) as pubs:
        pubs.go()
        result = pubs.join()
    if result.acked != spec.total:
        raise RuntimeError(f"only {result.acked} of {spec.total} messages were acknowledged")
    return result


class PacedPublisher:
    """One paho client in this process; `publish` records time.time() right before each send."""

    def __init__(self, host: str, port: int) -> None:
        self._client = _client(f"bench-paced-{uuid.uuid4().hex[:6]}")
        _connect(self._client, host, port)
        self._infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> float:
        at = time.time()
        self._infos.append(self._client.publish(topic, payload, qos=1))
        return at

    def wait_acked(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        for info in self._infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return sum(info.is_published() for info in self._infos)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
