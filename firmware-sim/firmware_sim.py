#!/usr/bin/env python3
"""firmware-sim: publish device fault messages the way faultmail's devices do.

Topic ``devices/{uid}/fault``, payload a UTF-8 JSON object (at most 16 KiB) with code, severity,
message, state, ts, seq (a per-device counter), uid and details; QoS 1. Every PUBACK is awaited
before exit. Used by ``make demo``, by integration tests (import `build_payloads`) and in the
field to check a gateway end to end.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import itertools
import json
import random
import ssl
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("critical", "error", "warning", "info")
SCENARIOS = ("faults", "cycle", "flood", "malformed")
MAX_PAYLOAD = 16 * 1024  # the device contract's limit; "oversize" goes just past it

EXIT_CONNECT = 2  # could not connect, or the broker refused us
EXIT_UNACKED = 3  # connected, but some PUBACKs never came
EXIT_USAGE = 4  # a scenario file that cannot be used


@dataclass(frozen=True)
class FaultKind:
    code: str
    severity: str
    message: str
    details: dict[str, str | int | float]


# A small catalogue of pump/valve/sensor faults with realistic wording and readings.
CATALOG: tuple[FaultKind, ...] = (
    FaultKind("E042", "critical", "Overpressure", {"pressure_bar": 9.7, "limit_bar": 8.0}),
    FaultKind("E017", "critical", "Motor overtemperature", {"winding_c": 142, "limit_c": 130}),
    FaultKind("E230", "error", "Flow sensor disconnected", {"channel": "AI2"}),
    FaultKind("E105", "error", "Dry run detected", {"flow_lpm": 0.0, "runtime_s": 45}),
    FaultKind("W311", "warning", "Filter differential pressure high", {"dp_bar": 1.4}),
    FaultKind("W120", "warning", "Supply voltage low", {"voltage_v": 21.3, "nominal_v": 24}),
    FaultKind("I001", "info", "Maintenance interval reached", {"hours": 8000}),
    FaultKind("I017", "info", "Firmware update available", {"version": "2.4.1"}),
)

MALFORMED_KINDS = (
    "invalid-json",
    "not-utf8",
    "missing-code",
    "wrong-severity",
    "uid-mismatch",
    "oversize",
    "deeply-nested",
    "not-an-object",
    "empty",
)


@dataclass(frozen=True)
class Message:
    """One message to publish. ``kind`` says what it is meant to test ("fault", "resolve",
    "flood" or the malformed kind); seq is None where the payload carries none."""

    topic: str
    payload: bytes
    uid: str
    kind: str
    seq: int | None = None
    code: str | None = None
    severity: str | None = None
    state: str | None = None

    def as_record(self, mid: int | None, acked: bool) -> dict[str, Any]:
        """The --json output line for this message."""
        record: dict[str, Any] = {"topic": self.topic, "mid": mid, "acked": acked}
        try:
            record["payload"] = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            record["payload"] = self.payload.decode("utf-8", "backslashreplace")
            record["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        record |= {
            "uid": self.uid,
            "kind": self.kind,
            "seq": self.seq,
            "code": self.code,
            "severity": self.severity,
            "state": self.state,
        }
        return record


@dataclass
class _Counter:
    """Per-device seq counters, starting at the same value for every device."""

    start: int
    values: dict[str, int] = field(default_factory=dict)

    def next(self, uid: str) -> int:
        value = self.values.get(uid, self.start)
        self.values[uid] = value + 1
        return value


def device_uids(prefix: str, devices: int) -> list[str]:
    """``{prefix}-01`` … ``{prefix}-NN``."""
    return [f"{prefix}-{i:02d}" for i in range(1, devices + 1)]


def format_ts(moment: float, ts_format: str) -> int | float | str:
    if ts_format == "rfc3339":
        when = datetime.datetime.fromtimestamp(moment, datetime.UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return int(moment)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _pick(rng: random.Random, severity: str, index: int, code: str | None) -> FaultKind:
    if code is not None:
        for kind in CATALOG:
            if kind.code == code:
                return kind
        return FaultKind(code, "error" if severity == "mix" else severity, f"Fault {code}", {})
    wanted = SEVERITIES[index % len(SEVERITIES)] if severity == "mix" else severity
    return rng.choice([kind for kind in CATALOG if kind.severity == wanted])


def _fault(
    topic_template: str,
    uid: str,
    kind: FaultKind,
    *,
    severity: str,
    state: str,
    seq: int,
    ts: int | float | str,
    label: str,
) -> Message:
    sev = kind.severity if severity == "mix" else severity
    text = kind.message if state == "active" else f"{kind.message} cleared"
    payload = {
        "code": kind.code,
        "severity": sev,
        "message": text,
        "state": state,
        "ts": ts,
        "seq": seq,
        "uid": uid,
        "details": dict(kind.details),
    }
    return Message(
        topic_template.format(uid=uid), _encode(payload), uid, label, seq, kind.code, sev, state
    )


def malformed_payload(kind: str, uid: str, seq: int, ts: int | float | str) -> bytes:
    """A payload that the daemon must reject (and account for as rejected) for the given kind."""
    base: dict[str, Any] = {
        "code": "E042",
        "severity": "critical",
        "message": "Overpressure",
        "state": "active",
        "ts": ts,
        "seq": seq,
        "uid": uid,
    }
    if kind == "invalid-json":
        return _encode(base)[:-12]  # cut off mid-object
    if kind == "not-utf8":
        # A Latin-1 degree sign, as firmware that builds strings by hand sends it.
        return _encode(base | {"message": "Motor temp 142 C"}).replace(b"142 C", b"142 \xb0C")
    if kind == "missing-code":
        return _encode({k: v for k, v in base.items() if k != "code"})
    if kind == "wrong-severity":
        return _encode(base | {"severity": "fatal"})
    if kind == "uid-mismatch":
        return _encode(base | {"uid": f"{uid}-impostor"})
    if kind == "oversize":
        filler = MAX_PAYLOAD + 512 - len(_encode(base))
        return _encode(base | {"message": "Overpressure " + "x" * filler})
    if kind == "deeply-nested":
        # 5000 levels (10 KB, under the size cap) exceed Python's default recursion limit.
        depth = 5000
        head = _encode(base)[:-1] + b',"details":'
        return head + b"[" * depth + b"]" * depth + b"}"
    if kind == "not-an-object":
        return json.dumps([base]).encode("utf-8")  # valid JSON, but an array
    if kind == "empty":
        return b""
    raise ValueError(f"unknown malformed kind {kind!r}")


def build_payloads(
    *,
    scenario: str = "faults",
    devices: int = 3,
    count: int | None = None,
    prefix: str = "pump",
    topic_template: str = "devices/{uid}/fault",
    severity: str = "mix",
    seed: int | None = None,
    seq_start: int = 1,
    now: float | None = None,
    ts_format: str = "epoch",
    code: str | None = None,
    state: str = "active",
) -> list[Message]:
    """The messages for a scenario, in publishing order (deterministic for a given seed).

    faults: ``count`` faults round-robin over the devices, in state ``state``; with
    severity "mix" the severities rotate critical, error, warning, info.
    cycle: each device raises a fault, then resolves it (pairs, ``count`` messages in all).
    flood: ``count`` copies of one fault from the first device, each with its own seq.
    malformed: the kinds in MALFORMED_KINDS, cycled to ``count`` messages.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}")
    if severity != "mix" and severity not in SEVERITIES:
        raise ValueError(f"severity must be 'mix' or one of {SEVERITIES}")
    if devices < 1:
        raise ValueError("devices must be at least 1")
    rng = random.Random(seed)
    uids = device_uids(prefix, devices)
    counter = _Counter(seq_start)
    moment = time.time() if now is None else now
    messages: list[Message] = []

    def ts(index: int) -> int | float | str:
        return format_ts(moment + index * 0.001, ts_format)

    def add_fault(index: int, uid: str, kind: FaultKind, msg_state: str, label: str) -> None:
        messages.append(
            _fault(
                topic_template,
                uid,
                kind,
                severity=severity,
                state=msg_state,
                seq=counter.next(uid),
                ts=ts(index),
                label=label,
            )
        )

    if scenario == "faults":
        total = devices if count is None else count
        label = "fault" if state == "active" else "resolve"
        for i in range(total):
            uid = uids[i % devices]
            add_fault(i, uid, _pick(rng, severity, i, code), state, label)
    elif scenario == "cycle":
        total = 2 * devices if count is None else count
        i = 0
        while len(messages) < total:
            uid = uids[(i // 2) % devices]
            if i % 2 == 0:
                kind = _pick(rng, severity, i // 2, code)
                current = kind
                msg_state, label = "active", "fault"
            else:
                msg_state, label = "resolved", "resolve"
            add_fault(i, uid, current, msg_state, label)
            i += 1
    elif scenario == "flood":
        total = 100 if count is None else count
        uid = uids[0]
        kind = _pick(rng, severity, 0, code)
        for i in range(total):
            add_fault(i, uid, kind, state, "flood")
    else:
        total = len(MALFORMED_KINDS) if count is None else count
        for i, kind_name in zip(range(total), itertools.cycle(MALFORMED_KINDS), strict=False):
            uid = uids[i % devices]
            seq = counter.next(uid)
            payload = malformed_payload(kind_name, uid, seq, ts(i))
            messages.append(Message(topic_template.format(uid=uid), payload, uid, kind_name, seq))
    return messages


# -- publishing (paho-mqtt is imported here so build_payloads works without it) ---------------


class _TrackingContext(ssl.SSLContext):
    """Remembers the sockets it wrapped: paho leaves the socket of a failed TLS handshake open,
    so we close it ourselves."""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.__dict__.setdefault("wrapped", []).append(sock)
        return sock

    def close_sockets(self) -> None:
        for sock in self.__dict__.pop("wrapped", []):
            sock.close()


class SimError(RuntimeError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Connection:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"
    tls: bool = False
    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Published:
    message: Message
    mid: int | None
    acked: bool


def publish(
    messages: Sequence[Message],
    connection: Connection,
    *,
    rate: float = 0.0,
    timeout: float = 30.0,
    on_result: Callable[[Published], None] | None = None,
) -> list[Published]:
    """Publish at QoS 1 (``rate`` messages/s overall, 0 = as fast as possible), wait for every
    PUBACK (at most ``timeout`` s after the last publish) and disconnect.

    on_result is called once per message, in publishing order, as soon as that message and all
    before it are acknowledged; unacknowledged ones are reported at the end. Raises SimError if
    the connection fails or the broker refuses it.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    version = mqtt.MQTTv5 if connection.protocol == "5" else mqtt.MQTTv311
    client_id = connection.client_id or f"firmware-sim-{random.getrandbits(32):08x}"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
    )
    if connection.username is not None:
        client.username_pw_set(connection.username, connection.password)
    context = None
    if connection.tls:
        context = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if connection.ca_file is not None:
            context.load_verify_locations(cafile=str(connection.ca_file))
        else:
            context.load_default_certs()
        if connection.cert is not None and connection.key is not None:
            context.load_cert_chain(str(connection.cert), str(connection.key))
        client.tls_set_context(context)
    where = f"{connection.host}:{connection.port}"
    connected = threading.Event()
    connack: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        connack.append(reason_code)
        connected.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if not connack:  # closed before CONNACK: e.g. TLS client certificate required
            connack.append(reason_code)
            connected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(connection.host, connection.port, keepalive=30)
    except OSError as error:  # refused, unreachable, TLS handshake or certificate failure
        if context is not None:
            context.close_sockets()
        raise SimError(f"cannot connect to MQTT broker {where}: {error}", EXIT_CONNECT) from error
    client.loop_start()
    results: list[Published] = []
    infos: list[mqtt.MQTTMessageInfo] = []

    def is_acked(info: mqtt.MQTTMessageInfo) -> bool:
        try:
            return info.is_published()
        except (ValueError, RuntimeError):  # never queued, or the connection was gone
            return False

    def drain() -> None:
        # Report in publishing order, each as soon as it and all before it are acknowledged.
        while len(results) < len(infos) and is_acked(infos[len(results)]):
            index = len(results)
            results.append(Published(messages[index], infos[index].mid, True))
            if on_result is not None:
                on_result(results[-1])

    try:
        if not connected.wait(connection.connect_timeout):
            raise SimError(f"no answer (CONNACK) from MQTT broker {where}", EXIT_CONNECT)
        if connack[0].is_failure or not client.is_connected():
            raise SimError(
                f"MQTT broker {where} refused or closed the connection: {connack[0]} "
                "(credentials, client certificate or protocol version?)",
                EXIT_CONNECT,
            )
        started = time.monotonic()
        for index, message in enumerate(messages):
            if rate > 0:
                slot = started + index / rate
                while (delay := slot - time.monotonic()) > 0:
                    drain()
                    time.sleep(min(delay, 0.01))
            infos.append(client.publish(message.topic, message.payload, qos=1))
            drain()
        deadline = time.monotonic() + timeout
        while len(results) < len(infos) and time.monotonic() < deadline:
            drain()
            time.sleep(0.005)
        drain()
        for index in range(len(results), len(infos)):
            info = infos[index]
            results.append(Published(messages[index], info.mid, is_acked(info)))
            if on_result is not None:
                on_result(results[-1])
        return results
    finally:
        client.disconnect()
        client.loop_stop()


# -- command line -----------------------------------------------------------------------------


def human_line(result: Published) -> str:
    m = result.message
    status = "acked" if result.acked else "NOT ACKED" if result.mid is not None else "not sent"
    if m.code is not None:
        what = f"{(m.severity or '?').upper():8} {m.code} {m.state}"
    else:
        what = f"malformed:{m.kind} ({len(m.payload)} bytes)"
    seq = f"seq={m.seq}" if m.seq is not None else ""
    return f"{m.topic:28} {what:32} {seq:14} mid={result.mid} {status}"


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="firmware-sim",
        description="Publish simulated device fault messages (QoS 1) to an MQTT broker.",
    )
    conn = parser.add_argument_group("connection")
    conn.add_argument("--host", default="127.0.0.1")
    conn.add_argument("--port", type=int, default=None, help="default 1883, or 8883 with --tls")
    conn.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    conn.add_argument("--tls", action="store_true")
    conn.add_argument("--ca-file", type=Path, help="CA certificate(s) to verify the broker")
    conn.add_argument("--cert", type=Path, help="client certificate (mutual TLS)")
    conn.add_argument("--key", type=Path, help="client private key (mutual TLS)")
    conn.add_argument("--username")
    conn.add_argument("--password-file", type=Path, help="file whose first line is the password")
    conn.add_argument("--client-id")
    parser.add_argument(
        "--scenario-file",
        type=Path,
        help="run the [[step]] tables of this TOML file in order (see firmware-sim/scenarios/)",
    )
    conn.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the last PUBACKs (default 30)",
    )

    sim = parser.add_argument_group("simulation")
    sim.add_argument("--scenario", choices=SCENARIOS, default="faults")
    sim.add_argument("--devices", type=int, default=3)
    sim.add_argument("--prefix", default="pump", help="device uids are {prefix}-01, -02, …")
    sim.add_argument(
        "--count",
        type=int,
        default=None,
        help="total messages (default: faults=devices, cycle=2*devices, flood=100, "
        "malformed=one of each kind)",
    )
    sim.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="messages per second overall; 0 = as fast as possible",
    )
    sim.add_argument("--topic-template", default="devices/{uid}/fault")
    sim.add_argument("--severity", choices=(*SEVERITIES, "mix"), default="mix")
    sim.add_argument("--code", help="use this fault code for every fault (faults/cycle/flood)")
    sim.add_argument(
        "--state",
        choices=("active", "resolved"),
        default="active",
        help="state for the faults and flood scenarios",
    )
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument(
        "--seq-start",
        type=int,
        default=None,
        help="first seq of every device (default: now in epoch milliseconds, so a "
        "re-run continues counting instead of replaying old numbers)",
    )
    sim.add_argument("--ts-format", choices=("epoch", "rfc3339"), default="epoch")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per message: topic, payload, mid, acked, …",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the messages without connecting"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.port is None:
        args.port = 8883 if args.tls else 1883
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if args.count is not None and args.count < 0:
        parser.error("--count must not be negative")
    if "{uid}" not in args.topic_template:
        parser.error("--topic-template must contain {uid}")
    return args


_STEP_KEYS = frozenset(
    {
        "scenario",
        "devices",
        "prefix",
        "count",
        "rate",
        "topic_template",
        "severity",
        "code",
        "state",
        "seed",
        "seq_start",
        "ts_format",
        "pause",
    }
)


def load_steps(path: Path, defaults: argparse.Namespace) -> list[argparse.Namespace]:
    """A scenario file: TOML with one [[step]] table per step, keys as the command-line
    simulation options (scenario, devices, prefix, count, rate, severity, code, state, seed,
    seq_start, ts_format, topic_template) plus `pause`, seconds to wait after the step."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SimError(f"scenario file {path}: {error}", EXIT_USAGE) from None
    steps = doc.get("step")
    if not isinstance(steps, list) or not steps:
        raise SimError(f"scenario file {path}: no [[step]] tables", EXIT_USAGE)
    result = []
    for index, step in enumerate(steps, 1):
        unknown = set(step) - _STEP_KEYS
        if unknown:
            raise SimError(
                f"scenario file {path}: step {index}: unknown keys {sorted(unknown)}", EXIT_USAGE
            )
        result.append(argparse.Namespace(**{**vars(defaults), **step}))
    return result


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    print_lock = threading.Lock()

    def emit(result: Published) -> None:
        line = json.dumps(result.message.as_record(result.mid, result.acked), ensure_ascii=False)
        with print_lock:
            print(line if args.json else human_line(result), flush=True)

    try:
        steps = load_steps(args.scenario_file, args) if args.scenario_file else [args]
        connection = None if args.dry_run else _connection(args)
        total = 0
        for step in steps:
            total += _run_step(step, connection, emit)
            time.sleep(float(getattr(step, "pause", 0) or 0))
    except SimError as error:
        print(f"firmware-sim: {error}", file=sys.stderr)
        return error.exit_code
    if not args.json and not args.dry_run:
        print(f"firmware-sim: {total} messages published and acknowledged", file=sys.stderr)
    return 0


def _connection(args: argparse.Namespace) -> Connection:
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().splitlines()[0]
        except (OSError, IndexError) as error:
            raise SimError(f"cannot read password file: {error}", EXIT_CONNECT) from None
    return Connection(
        host=args.host,
        port=args.port,
        protocol=args.protocol,
        tls=args.tls or args.ca_file is not None,
        ca_file=args.ca_file,
        cert=args.cert,
        key=args.key,
        username=args.username,
        password=password,
        client_id=args.client_id,
    )


def _run_step(
    step: argparse.Namespace, connection: Connection | None, emit: Callable[[Published], None]
) -> int:
    seq_start = step.seq_start if step.seq_start is not None else int(time.time() * 1000)
    messages = build_payloads(
        scenario=step.scenario,
        devices=step.devices,
        count=step.count,
        prefix=step.prefix,
        topic_template=step.topic_template,
        severity=step.severity,
        seed=step.seed,
        seq_start=seq_start,
        ts_format=step.ts_format,
        code=step.code,
        state=step.state,
    )
    if connection is None:
        for message in messages:
            emit(Published(message, None, False))
        return len(messages)
    results = publish(messages, connection, rate=step.rate, timeout=step.timeout, on_result=emit)
    unacked = sum(1 for r in results if not r.acked)
    if unacked:
        raise SimError(f"{unacked} of {len(results)} messages were not acknowledged", EXIT_UNACKED)
    return len(results)


if __name__ == "__main__":
    sys.exit(main())
