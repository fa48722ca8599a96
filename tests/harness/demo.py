"""``make demo``: the whole path on one machine, devices to mailbox, in about ten seconds.

Starts a private Mosquitto and a STARTTLS+AUTH relay (throw-away CA) on free loopback ports,
writes a daemon config into demo-out/, starts the real daemon, lets firmware-sim publish faults
(mixed severities, one resolve, one malformed payload), prints each mail as the relay accepts
it, waits until ``alerts --json`` accounts for every published message, prints a summary and
stops everything. Exit status 0 only if every message was accounted for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import dkim

from agent.signing import keygen
from tests.harness.daemon import REPO_ROOT, Daemon, DaemonError, write_config
from tests.harness.mosquitto import Mosquitto
from tests.harness.pki import TestPKI
from tests.harness.relay import ReceivedMail, Relay

OUT = REPO_ROOT / "demo-out"
FIRMWARE_SIM = REPO_ROOT / "firmware-sim" / "firmware_sim.py"
SMTP_USER = "gw@example.com"
RECIPIENT = "ops@example.com"
TOPIC = "devices/+/fault"
ACCOUNTED = {"sent", "rejected", "suppressed", "silenced"}
FINAL = ACCOUNTED | {"dead"}
TIMEOUT = 60.0

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


@dataclass(frozen=True)
class Published:
    """One message firmware-sim published (its --json line)."""

    topic: str
    uid: str
    seq: int | None
    kind: str
    code: str | None
    severity: str | None
    state: str | None
    acked: bool


def run_sim(broker: Mosquitto, *args: str) -> list[Published]:
    """Run firmware-sim as a subprocess (as an operator would) and parse its --json lines."""
    command = [
        sys.executable,
        str(FIRMWARE_SIM),
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--json",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"firmware-sim failed ({result.returncode}): {result.stderr.strip()}")
    published = []
    for line in result.stdout.splitlines():
        record = json.loads(line)
        published.append(
            Published(
                topic=record["topic"],
                uid=record["uid"],
                seq=record["seq"],
                kind=record["kind"],
                code=record["code"],
                severity=record["severity"],
                state=record["state"],
                acked=record["acked"],
            )
        )
    return published


def match(
    published: list[Published], alerts: list[dict[str, Any]]
) -> list[tuple[Published, dict[str, Any] | None]]:
    """Pair each published message with its alert row: by (topic, seq) first, then for payloads
    the daemon could not read a seq from, by topic in arrival order."""
    remaining = sorted(alerts, key=lambda a: a.get("id") or 0)
    pairs: dict[int, dict[str, Any]] = {}
    for index, message in enumerate(published):
        for alert in remaining:
            if alert.get("topic") == message.topic and alert.get("seq") == message.seq:
                pairs[index] = alert
                remaining.remove(alert)
                break
    for index, message in enumerate(published):
        if index in pairs:
            continue
        for alert in remaining:
            if alert.get("topic") == message.topic:
                pairs[index] = alert
                remaining.remove(alert)
                break
    return [(message, pairs.get(index)) for index, message in enumerate(published)]


def wait_accounted(
    daemon: Daemon, published: list[Published], timeout: float
) -> list[tuple[Published, dict[str, Any] | None]]:
    deadline = time.monotonic() + timeout
    while True:
        pairs = match(published, daemon.alerts())
        if all(alert is not None and alert.get("state") in FINAL for _, alert in pairs):
            return pairs
        if time.monotonic() > deadline or not daemon.running:
            return pairs
        time.sleep(0.25)


def print_summary(pairs: list[tuple[Published, dict[str, Any] | None]], relay: Relay) -> bool:
    states = Counter(alert["state"] if alert else "unaccounted" for _, alert in pairs)
    say()
    say("Summary")
    say(f"  {'published':<12}{len(pairs):>4}")
    for state in ("sent", "suppressed", "silenced", "rejected", "dead", "pending", "unaccounted"):
        if states[state] or state in ACCOUNTED:
            say(f"  {state:<12}{states[state]:>4}")
        for message, alert in pairs:
            current = alert["state"] if alert else "unaccounted"
            if current == state and state != "sent":
                reason = (alert or {}).get("reason") or "-"
                seq = "" if message.seq is None else f" seq {message.seq}"
                say(f"  {'':<12}      {message.topic}{seq} ({message.kind}): {reason}")
    mails = relay.mails
    say(f"  {'mails':<12}{len(mails):>4}  (relay accepted; alerts may be grouped into one mail)")
    ok = all(alert is not None and alert["state"] in ACCOUNTED for _, alert in pairs)
    return ok


def mail_printer(dkim_records: dict[str, str]) -> Callable[[ReceivedMail], None]:
    """Print each arriving mail with its DKIM verdict, checked against the record keygen
    printed (served by a stub resolver: no DNS here)."""

    def lookup(name: bytes, **_: Any) -> bytes | None:
        txt = dkim_records.get(name.decode().rstrip("."))
        return txt.encode() if txt else None

    def print_mail(mail: ReceivedMail) -> None:
        verdict = "pass" if dkim.verify(mail.data, dnsfunc=lookup) else "FAIL"
        kind = mail.message.get("X-Faultmail-Kind", "?")
        say(f"→ {', '.join(mail.rcpt_tos)}  dkim={verdict}  {kind:<9} {mail.subject}")

    return print_mail


def _cli(daemon: Daemon, *args: str) -> None:
    result = daemon.cli(*args)
    say(f"$ faultmail {shlex.join(args)}\n  {(result.stdout or result.stderr).strip()}")
    if result.returncode != 0:
        raise RuntimeError(f"faultmail {args[0]} exited with {result.returncode}")


def _mailed(relay: Relay, uid: str, kind: str, timeout: float = 20.0) -> ReceivedMail:
    deadline = time.monotonic() + timeout
    while True:
        for mail in relay.mails:
            if (
                mail.message["X-Faultmail-Device"] == uid
                and mail.message["X-Faultmail-Kind"] == kind
            ):
                return mail
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {kind} mail for {uid} within {timeout:.0f} s")
        time.sleep(0.1)


def show_silence(daemon: Daemon, broker: Mosquitto, relay: Relay) -> list[Published]:
    """A silence over fan-*: a start notice, two faults recorded as silenced, then an early
    end: the end summary, and the fault still active mailed as active."""
    say()
    _cli(daemon, "silence", "add", "--device", "fan-*", "--for", "1h", "--reason", "fan swap")
    published = run_sim(
        broker, "--scenario", "faults", "--prefix", "fan", "--devices", "1", "--count", "2",
        "--code", "E220", "--severity", "error", "--seq-start", "1",
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while sum(a["state"] == "silenced" for a in daemon.alerts()) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the silenced faults were not recorded")
        time.sleep(0.1)
    _cli(daemon, "silence", "expire", "1")
    _mailed(relay, published[-1].uid, "alert")
    return published


def show_ack(daemon: Daemon, broker: Mosquitto, relay: Relay) -> list[Published]:
    """A compressor fault acknowledged after its first mail: its repeats send no follow-up;
    the resolve goes out at once and says who acknowledged."""
    say()
    published = run_sim(
        broker, "--scenario", "faults", "--prefix", "comp", "--devices", "1", "--count", "1",
        "--code", "E310", "--severity", "error", "--seq-start", "1",
    )  # fmt: skip
    uid = published[0].uid
    _mailed(relay, uid, "alert")
    _cli(daemon, "ack", uid, "E310", "--by", "Eva Nováková", "--note", "replacing the valve")
    published += run_sim(
        broker, "--scenario", "faults", "--prefix", "comp", "--devices", "1", "--count", "5",
        "--code", "E310", "--severity", "error", "--seq-start", "2", "--rate", "50",
    )  # fmt: skip
    time.sleep(5.0)  # longer than the repeat window: no follow-up appears
    published += run_sim(
        broker, "--scenario", "faults", "--prefix", "comp", "--devices", "1", "--count", "1",
        "--code", "E310", "--state", "resolved", "--seq-start", "7",
    )  # fmt: skip
    body = _mailed(relay, uid, "resolved").message.get_body(preferencelist=("plain",))
    acked = [
        ln for ln in str(body.get_content() if body else "").splitlines() if "Acknowledged" in ln
    ]
    say(f"  (no follow-up for the 5 repeats; the resolve says: {' '.join(acked) or '-'})")
    return published


def _stop_daemon(daemon: Daemon) -> None:
    """SIGTERM first (the daemon finishes what it is doing), SIGKILL only if it hangs."""
    try:
        if daemon.running:
            daemon.terminate(timeout=10)
    except DaemonError as error:
        say(str(error))
    finally:
        daemon.close()


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def demo() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    mails_dir = OUT / "mails"
    pki = TestPKI("faultmail demo CA")
    # What `faultmail dkim keygen` does on a gateway; the record would go into DNS.
    dkim_key = keygen("demo", "example.com", OUT / "dkim-demo.key")
    dkim_records = {dkim_key.dns_name: "".join(dkim_key.txt_strings)}

    with contextlib.ExitStack() as stack:
        broker = Mosquitto(OUT / "mosquitto", persistence=True)
        broker.start()
        stack.callback(broker.stop)
        say(f"mosquitto   mqtt://{broker.host}:{broker.port}  (log {broker.log_path})")

        password = secrets.token_urlsafe(18)
        password_file = OUT / "smtp-password"
        password_file.touch(mode=0o600)
        password_file.write_text(password + "\n")
        relay = Relay(
            OUT / "relay",
            pki,
            mode="starttls",
            users={SMTP_USER: password},
            save_dir=mails_dir,
            on_mail=mail_printer(dkim_records),
        )
        relay.start()
        stack.callback(relay.stop)
        say(f"relay       smtp://{relay.host}:{relay.port}  STARTTLS + AUTH as {SMTP_USER}")

        config = write_config(
            OUT / "faultmail.toml",
            gateway_id="gw-demo-01",
            state_dir=OUT / "state",
            site="Demo pump station",
            mqtt={
                "host": broker.host,
                "port": broker.port,
                "protocol": "5",
                "tls": False,
                "client_id": "faultmail-gw-demo-01",
                "topics": [TOPIC],
            },
            smtp={
                "host": "localhost",
                "port": relay.port,
                "security": "starttls",
                "ca_file": str(relay.ca_file),
                "username": SMTP_USER,
                "password_file": str(password_file),
                "from": f"Gateway Demo <{SMTP_USER}>",
                "timeout": 10,
            },
            policy={"allowed_domains": ["example.com"], "allowed_recipients": []},
            routes=[{"topics": [TOPIC], "min_severity": "info", "to": [RECIPIENT]}],
            delivery={"retry_initial": 0.5, "retry_max": 5.0},
            logging={"format": "json", "level": "info"},
            extra={
                # Repeats of one fault within 4 s become one follow-up mail.
                "mail": {"repeat_window": 4.0, "timezone": "Europe/Prague"},
                "dkim": {
                    "domain": "example.com",
                    "selector": "demo",
                    "private_key_file": str(dkim_key.path),
                },
            },
        )
        daemon = Daemon(config, OUT / "daemon")
        stack.callback(_stop_daemon, daemon)
        daemon.start(timeout=15)
        say(f"faultmail   pid {daemon.pid}  (config {config}, log {daemon.log_path})")
        say()

        # 6 active faults over 3 pumps, then pump-01 resolves its first one, then a valve sends
        # a payload that is not valid JSON. Explicit seq numbers keep each device counting on.
        published = run_sim(
            broker, "--scenario", "faults", "--devices", "3", "--count", "6",
            "--severity", "mix", "--seed", "7", "--seq-start", "1", "--rate", "20",
        )  # fmt: skip
        first = next(m for m in published if m.uid == "pump-01")
        assert first.code is not None
        published += run_sim(
            broker, "--scenario", "faults", "--devices", "1", "--count", "1", "--code",
            first.code, "--state", "resolved", "--seq-start", "3",
        )  # fmt: skip
        # A pressure sensor repeating the same critical fault 12 times: one mail now, one
        # follow-up when the repeat window ends.
        published += run_sim(
            broker, "--scenario", "faults", "--prefix", "press", "--devices", "1", "--count",
            "12", "--code", "E042", "--severity", "critical", "--seq-start", "1", "--rate", "50",
        )  # fmt: skip
        published += run_sim(
            broker, "--scenario", "malformed", "--prefix", "valve", "--devices", "1",
            "--count", "1", "--seq-start", "1",
        )  # fmt: skip
        published += show_silence(daemon, broker, relay)
        published += show_ack(daemon, broker, relay)
        unacked = [m for m in published if not m.acked]
        if unacked:
            say(f"firmware-sim: {len(unacked)} messages were not acknowledged by the broker")

        pairs = wait_accounted(daemon, published, TIMEOUT)
        time.sleep(0.5)  # let a mail that is on the wire right now still be printed
        ok = print_summary(pairs, relay) and not unacked
        say(f"\nmails saved in {mails_dir}/ ({len(list(mails_dir.glob('*.eml')))} .eml files)")
        if not ok:
            say(f"NOT everything was accounted for within {TIMEOUT:.0f} s; daemon log tail:")
            say(daemon.log_tail(30))

        code, seconds = daemon.terminate(timeout=15)
        say(f"faultmail stopped with exit code {code} {seconds:.1f} s after SIGTERM")
        return 0 if ok and code == 0 else 1


def main() -> int:
    # aiosmtpd warns about a deprecated attribute on every AUTH; not interesting here.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return demo()
    except KeyboardInterrupt:
        say("\ninterrupted; everything the demo started has been stopped")
        return 130
    except (DaemonError, RuntimeError, TimeoutError) as error:
        say(f"\ndemo failed: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
