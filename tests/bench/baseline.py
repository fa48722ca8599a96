"""The baseline for faultmail's mail rate (issue 18): a bare aiosmtplib client sending N prebuilt
mails through the bench's own relay, as fast as it can.

Same relay (common.SinkRelay: STARTTLS + AUTH), same number of connections as the daemon
(smtp.connections, 2 as shipped), each opened, upgraded and logged in once before the clock
starts and reused for every mail. The mails are built beforehand with EmailMessage (a text and
an HTML part, quoted-printable, faultmail's headers, about the size of faultmail's own mails)
and serialised to bytes, so what is timed is submission alone: MAIL, RCPT, DATA per mail, as the
daemon's submitter does it. The client runs in a child process, so it neither shares a GIL with
the relay nor has the relay's CPU counted as its own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from tests.bench.common import RECIPIENT, SMTP_USER, BenchError, Stack, received_ts

# What the bench's faultmail mails weigh (one alert, DKIM off) when no e2e run measured it.
DEFAULT_MAIL_BYTES = 3000


@dataclass(frozen=True)
class Baseline:
    mails: int
    connections: int
    rate: float  # mails/s, from the client's start to the relay's last 250
    client_cpu_ms: float  # client process CPU per mail (submission only)
    relay_cpu_ms: float  # the relay's (this process's) CPU per mail meanwhile
    mail_bytes: float  # mean size of the mails as the relay received them


def _mail(index: int, filler_lines: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Gateway Bench <{SMTP_USER}>"
    msg["To"] = RECIPIENT
    msg["Subject"] = f"[ERROR] pump-{index % 20:03d}: E042 bench baseline #{index}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Faultmail-Gateway"] = "gw-bench-01"
    msg["X-Faultmail-Kind"] = "alert"
    msg["X-Faultmail-Device"] = f"pump-{index % 20:03d}"
    msg["X-Faultmail-Code"] = "E042"
    msg["X-Faultmail-Severity"] = "error"
    msg["X-Faultmail-Alert-Ids"] = str(index + 1)
    line = f"pump-{index % 20:03d} reported E042 (error) at the bench site, alert {index}."
    text = "\n".join([line] * filler_lines)
    html = "<p>" + "</p>\n<p>".join([line] * filler_lines) + "</p>"
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def build_mails(count: int, size: int) -> list[bytes]:
    """`count` distinct mails of about `size` bytes each (the body grows a line at a time)."""
    lines = 1
    while len(_mail(0, lines)) < size and lines < 1000:
        lines += 1
    return [_mail(i, lines) for i in range(count)]


async def _send(
    port: int, ca_file: str, password: str, mails: list[bytes], connections: int, go: Any, out: Any
) -> None:
    import ssl

    import aiosmtplib

    context = ssl.create_default_context(cafile=ca_file)
    clients = []
    for _ in range(connections):
        smtp = aiosmtplib.SMTP(
            hostname="localhost", port=port, start_tls=False, tls_context=context, timeout=10
        )
        await smtp.connect()
        await smtp.starttls()
        await smtp.login(SMTP_USER, password)
        clients.append(smtp)
    out.put(("ready", None))
    # The parent starts counting the relay's CPU now; waiting here blocks the loop, which has
    # nothing else to do before the first mail.
    if not go.wait(60):
        raise BenchError("no start signal within 60 s")

    async def worker(smtp: aiosmtplib.SMTP, share: list[bytes]) -> None:
        for data in share:
            await smtp.sendmail(SMTP_USER, [RECIPIENT], data)

    started, cpu0 = time.time(), time.process_time()
    await asyncio.gather(*(worker(smtp, mails[i::connections]) for i, smtp in enumerate(clients)))
    cpu = time.process_time() - cpu0
    out.put(("done", {"started": started, "cpu": cpu}))
    for smtp in clients:
        await smtp.quit()


def _child(
    port: int,
    ca_file: str,
    password: str,
    count: int,
    size: int,
    connections: int,
    go: Any,
    out: Any,
) -> None:
    try:
        mails = build_mails(count, size)  # before the clock starts
        asyncio.run(_send(port, ca_file, password, mails, connections, go, out))
    except Exception as exc:  # reported to the parent, which raises
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _get(out: Any, timeout: float, what: str) -> Any:
    try:
        kind, info = out.get(timeout=timeout)
    except queue.Empty:
        raise BenchError(f"the baseline client had not {what} after {timeout:.0f} s") from None
    if kind == "error":
        raise BenchError(f"the baseline client failed: {info}")
    return info


def measure(stack: Stack, count: int, size: int, connections: int = 2) -> Baseline:
    """Send `count` mails of about `size` bytes through the stack's relay from a child process."""
    ctx = multiprocessing.get_context("spawn")
    out: Any = ctx.Queue()
    go = ctx.Event()
    relay = stack.relay
    already = len(relay.mails)
    proc = ctx.Process(
        target=_child,
        # The relay's certificate names localhost, which is where its port listens.
        args=(
            relay.port,
            str(relay.ca_file),
            stack.run.password,
            count,
            size,
            connections,
            go,
            out,
        ),
        name="bench-baseline-client",
        daemon=True,
    )
    proc.start()
    try:
        _get(out, 60, "connected and logged in")
        relay0 = time.process_time()
        go.set()
        info = _get(out, count / 50 + 60, f"sent {count} mails")
        mails = relay.wait_for(already + count, timeout=30)[already:]
        relay_cpu = time.process_time() - relay0
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    end = max(received_ts(m) for m in mails)
    return Baseline(
        mails=len(mails),
        connections=connections,
        rate=len(mails) / (end - info["started"]),
        client_cpu_ms=info["cpu"] / len(mails) * 1000,
        relay_cpu_ms=relay_cpu / len(mails) * 1000,
        mail_bytes=sum(len(m.data) for m in mails) / len(mails),
    )
