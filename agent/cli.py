"""The faultmail command: parse arguments → call → print. No business logic here.

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, OutboxCorrupt, OutboxError
from agent.models import AlertState
from agent.settings import DEFAULT_CONFIG_PATH, Settings, load_settings

# 3: the outbox database is damaged; the unit must not restart into the same failure.
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_CORRUPT = 0, 1, 2, 3
# Stage states (agent.liveness.StageState) that `status` counts as healthy.
_STAGE_OK = ("alive", "starting")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("FAULTMAIL_CONFIG", DEFAULT_CONFIG_PATH)),
        help="configuration file (default: $FAULTMAIL_CONFIG or %(default)s)",
    )
    # For sub-actions (queue retry): --config may stand before or after the action word; a
    # second default here would silently override one given before it.
    nested = argparse.ArgumentParser(add_help=False)
    nested.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="configuration file")
    parser = argparse.ArgumentParser(
        prog="faultmail", description="Turns MQTT device faults into e-mail for operations."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")

    alerts = sub.add_parser("alerts", parents=[common], help="list alerts and their outcome")
    alerts.add_argument("--json", action="store_true", help="one JSON object per line")
    alerts.add_argument("--uid", help="only this device")
    alerts.add_argument("--state", choices=[s.value for s in AlertState])
    alerts.add_argument(
        "--since", type=_time_arg, default=0.0, help="RFC 3339 time or epoch seconds"
    )

    audit = sub.add_parser("audit", parents=[common], help="list send attempts and decisions")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_argument(
        "--since", type=_time_arg, default=0.0, help="RFC 3339 time or epoch seconds"
    )

    queue = sub.add_parser("queue", parents=[common], help="pending and dead mails; retry, drop")
    queue.add_argument("--json", action="store_true", help="one JSON object per line")
    queue_sub = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    retry = queue_sub.add_parser("retry", parents=[nested], help="re-queue dead mails, due now")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("mail_id", nargs="?", type=int, help="the mail's id (see `queue`)")
    target.add_argument("--all-dead", action="store_true", help="every dead mail")
    drop = queue_sub.add_parser("drop", parents=[nested], help="give up on a pending mail")
    drop.add_argument("mail_id", type=int)
    drop.add_argument("--reason", required=True, help="recorded in the audit log")

    devices = sub.add_parser(
        "devices", parents=[common], help="devices with state and counters; block, unblock"
    )
    devices.add_argument("--json", action="store_true", help="one JSON object per line")
    devices_sub = devices.add_subparsers(dest="devices_command", metavar="ACTION")
    block = devices_sub.add_parser(
        "block", parents=[nested], help="stop mailing a device's alerts (audited)"
    )
    block.add_argument("uid")
    block.add_argument("--reason", required=True, help="recorded in the audit log")
    unblock = devices_sub.add_parser(
        "unblock", parents=[nested], help="mail a blocked device's alerts again (audited)"
    )
    unblock.add_argument("uid")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="is the daemon running; queue figures; last successful send",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")

    send_test = sub.add_parser(
        "send-test",
        parents=[common],
        help="send one real test mail through compose, DKIM and the relay",
    )
    send_test.add_argument("--to", help="recipient (allowlist applies; default: first route's)")

    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check this installation: config, outbox, broker, relay, DKIM/SPF/DMARC, clock",
    )
    doctor.add_argument("--resolver", help="DNS server HOST[:PORT] (default: the system's)")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds per network check")

    dkim = sub.add_parser("dkim", help="DKIM key tools")
    dkim_sub = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = dkim_sub.add_parser(
        "keygen", help="write a new private key (0600) and print the DNS TXT record to publish"
    )
    keygen.add_argument("--selector", required=True, help="e.g. gw2026")
    keygen.add_argument("--domain", required=True, help="the From domain, e.g. example.com")
    keygen.add_argument(
        "--type",
        choices=["rsa", "ed25519"],
        default="rsa",
        help="rsa (2048 bits, default) or ed25519 (RFC 8463)",
    )
    keygen.add_argument("--out", type=Path, help="key file (default: ./SELECTOR.DOMAIN.key)")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser(
        "check", parents=[common], help="validate and print the effective config, secrets redacted"
    )
    return parser


def _time_arg(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither epoch seconds nor an RFC 3339 time"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dkim":
        return _dkim_keygen(args)
    if args.command == "doctor":
        # It reports a bad configuration as one of its checks, so it loads the file itself.
        from agent import doctor

        return doctor.main(args.config, resolver=args.resolver, timeout=args.timeout)
    try:
        settings = load_settings(args.config)
        if args.command == "run":
            return _run(settings)
        if args.command == "alerts":
            return _alerts(settings, args)
        if args.command == "audit":
            return _audit(settings, args)
        if args.command == "queue":
            return _queue(settings, args)
        if args.command == "devices":
            return _devices(settings, args)
        if args.command == "status":
            return _status(settings, args)
        if args.command == "send-test":
            return _send_test(settings, args)
        return _config_check(settings)
    except ConfigError as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OutboxCorrupt as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except OutboxError as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _run(settings: Settings) -> int:
    # Imported here so that the quick CLI commands do not pay for paho and aiosmtplib.
    from agent.app import run_daemon
    from agent.failpoints import Failpoints
    from agent.logs import configure_logging

    configure_logging(
        fmt=settings.logging.format, level=settings.logging.level, secrets=settings.secrets()
    )
    failpoints = Failpoints.from_env(os.environ.get("FAULTMAIL_FAILPOINTS"))
    return asyncio.run(run_daemon(settings, failpoints))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _open(settings: Settings, *, readonly: bool = True) -> Any:
    from agent.outbox import Outbox

    return Outbox(settings.outbox_path, readonly=readonly)


def _alerts(settings: Settings, args: argparse.Namespace) -> int:
    outbox = _open(settings)
    state = AlertState(args.state) if args.state else None
    rows = outbox.alerts(uid=args.uid, state=state, since=args.since)
    out = (
        {**row, "received_at": _iso(row["received_at"]), "sent_at": _iso(row["sent_at"])}
        for row in rows
    )
    _print_rows(
        out,
        args.json,
        ["id", "received_at", "uid", "seq", "severity", "code", "state", "message_id", "reason"],
    )
    outbox.close()
    return EXIT_OK


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    outbox = _open(settings)
    out = ({**row, "ts": _iso(row["ts"])} for row in outbox.audit_log(since=args.since))
    _print_rows(
        out,
        args.json,
        [
            "id",
            "ts",
            "event",
            "outcome",
            "mail_id",
            "alert_ids",
            "smtp_code",
            "duration_ms",
            "detail",
        ],
    )
    outbox.close()
    return EXIT_OK


def _actor() -> str:
    """Who ran the command, for the audit log (the login behind sudo where there is one)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _queue(settings: Settings, args: argparse.Namespace) -> int:
    now = time.time()
    if args.queue_command is None:
        outbox = _open(settings)
        rows = (
            {
                **row,
                "age_s": round(now - row["created_at"], 1),
                "created_at": _iso(row["created_at"]),
                "next_attempt_at": _iso(row["next_attempt_at"]),
            }
            for row in outbox.mails()
        )
        _print_rows(
            rows,
            args.json,
            [
                "id",
                "state",
                "age_s",
                "attempts",
                "next_attempt_at",
                "recipients",
                "alert_ids",
                "last_reply",
            ],
        )
        outbox.close()
        return EXIT_OK
    outbox = _open(settings, readonly=False)
    try:
        if args.queue_command == "retry":
            if not args.all_dead:
                ids = outbox.requeue([args.mail_id], now, _actor())
                print(f"re-queued {len(ids)} mail(s): {', '.join(map(str, ids)) or '-'}")
                return EXIT_OK if ids else EXIT_FAILURE
            return _requeue_all(outbox, now)
        if outbox.drop(args.mail_id, args.reason, now, _actor()):
            print(f"dropped mail {args.mail_id}")
            return EXIT_OK
        print(f"faultmail: mail {args.mail_id} is not pending", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        outbox.close()


def _devices(settings: Settings, args: argparse.Namespace) -> int:
    if args.devices_command is None:
        outbox = _open(settings)
        rows = (
            {**r, "last_seen": _iso(r["last_seen"]), "blocked_at": _iso(r["blocked_at"])}
            for r in outbox.devices()
        )
        _print_rows(
            rows,
            args.json,
            [
                "uid",
                "state",
                "received",
                "suppressed",
                "dropped",
                "rejected",
                "suspicious",
                "last_seen",
                "block_reason",
            ],
        )
        outbox.close()
        return EXIT_OK
    outbox = _open(settings, readonly=False)
    try:
        blocking = args.devices_command == "block"
        reason = args.reason if blocking else ""
        if outbox.set_blocked(args.uid, blocking, reason, time.time(), _actor()):
            print(
                f"{args.uid} {'blocked' if blocking else 'unblocked'}; the daemon applies it "
                "within a second"
            )
            return EXIT_OK
        print(
            f"faultmail: {args.uid} is already {'blocked' if blocking else 'not blocked'}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        outbox.close()


def _status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the daemon is running (a fresh heartbeat from a live process) and every
    stage is alive; else 1, naming the stage that is stalled or dead."""
    now = time.time()
    outbox = _open(settings)
    beat = outbox.heartbeat()
    gauges = outbox.gauges(now)
    outbox.close()
    running = False
    age = None if beat is None else now - float(beat["ts"])
    # abs(): a heartbeat "from the future" after the clock stepped back is still fresh.
    if age is not None and abs(age) < 3 * settings.health.interval + 5:
        try:
            os.kill(int(beat["pid"]), 0)
            running = True
        except PermissionError:
            running = True  # alive, owned by the service user
        except ProcessLookupError:
            running = False
    stages: dict[str, dict[str, Any]] = dict(beat.get("stages") or {}) if beat else {}
    troubled = {
        name: stage for name, stage in stages.items() if stage.get("state") not in _STAGE_OK
    }
    report = {
        "running": running,
        "healthy": running and not troubled,
        "heartbeat_age_s": None if age is None else round(age, 1),
        "pending_alerts": gauges.pending_alerts,
        "pending_mails": gauges.pending_mails,
        "dead_mails": gauges.dead_mails,
        "oldest_pending_age_s": round(gauges.oldest_pending_age_s, 1),
        "blocked_devices": gauges.blocked_devices,
        "last_successful_send": _iso(gauges.last_sent_at),
        "stages": stages if running else {},
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key == "stages":
                continue
            print(f"{key.replace('_', ' '):<24}{'-' if value is None else value}")
        for name, stage in report["stages"].items():
            line = f"{stage.get('state')}, last sign of life {stage.get('silent_s')} s ago"
            if stage.get("error"):
                line += f": {stage['error']}"
            print(f"{'stage ' + name:<24}{line}")
    return EXIT_OK if report["healthy"] else EXIT_FAILURE


def _send_test(settings: Settings, args: argparse.Namespace) -> int:
    import secrets as random_ids

    from agent.compose import ComposeContext, compose
    from agent.errors import DeliveryError, PolicyRefusal
    from agent.models import Alert, FaultState, Mail, Severity
    from agent.outbox import AuditEntry
    from agent.signing import DkimSigner
    from agent.submit import SmtpSubmitter

    to = args.to or settings.routes[0].to[0]
    now = time.time()
    smtp = settings.smtp
    alert = Alert(
        id=0,
        topic="faultmail/test",
        uid=settings.gateway.id,
        seq=None,
        code="TEST",
        severity=Severity.INFO,
        fault_state=FaultState.ACTIVE,
        message=f"Test mail from faultmail on {settings.gateway.id}, sent by {_actor()}",
        details={},
        device_ts=None,
        received_at=now,
    )
    message_id = (
        f"<faultmail.{settings.gateway.id}.test.{random_ids.token_hex(6)}@{smtp.sender_domain}>"
    )
    mail = Mail(
        id=0, message_id=message_id, created_at=now, recipients=(to,), attempts=0, alerts=(alert,)
    )
    data = compose(mail, ComposeContext.from_settings(settings), now).as_bytes()
    if settings.dkim is not None:
        data = DkimSigner(settings.dkim).sign(data)
    submitter = SmtpSubmitter.from_settings(settings)

    async def send() -> str:
        try:
            result = await submitter.submit(smtp.sender_address, [to], data)
            return f"{result.code} {result.reply}"
        finally:
            await submitter.close()

    started = time.monotonic()
    try:
        reply, outcome, code = asyncio.run(send()), "sent", EXIT_OK
    except (DeliveryError, PolicyRefusal) as exc:
        reply, outcome, code = str(exc), "failed", EXIT_FAILURE
    outbox = _open(settings, readonly=False)
    outbox.record(
        AuditEntry(
            "send_test",
            outcome,
            relay=submitter.relay,
            detail=f"to {to}: {reply} ({message_id}) by {_actor()}",
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        ),
        now,
    )
    outbox.close()
    print(f"{'sent' if code == EXIT_OK else 'NOT sent'} to {to} via {submitter.relay}: {reply}")
    print(f"Message-ID: {message_id}")
    return code


def _dkim_keygen(args: argparse.Namespace) -> int:
    from agent.signing import keygen

    out = args.out or Path(f"{args.selector}.{args.domain}.{args.type}.key")
    try:
        key = keygen(args.selector, args.domain, out, args.type)
    except FileExistsError:
        print(f"faultmail: {out} exists; remove it or choose another --out", file=sys.stderr)
        return EXIT_FAILURE
    print(f"private key written to {key.path} (mode 0600)", file=sys.stderr)
    print("publish this DNS TXT record:", file=sys.stderr)
    print(key.zone_line())
    return EXIT_OK


def _requeue_all(outbox: Any, now: float, chunk: int = 100) -> int:
    """Re-queue every dead mail in chunks, showing progress on stderr (hundreds can be dead
    after a long relay misconfiguration)."""
    dead = outbox.dead_mail_ids()
    done = 0
    for start in range(0, len(dead), chunk):
        done += len(outbox.requeue(dead[start : start + chunk], now, _actor()))
        if len(dead) > chunk:
            print(f"\rre-queued {done}/{len(dead)}", end="", file=sys.stderr, flush=True)
    if len(dead) > chunk:
        print(file=sys.stderr)
    print(f"re-queued {done} dead mail(s)")
    return EXIT_OK


def _print_rows(rows: Iterable[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, default=str))
        return
    print("  ".join(columns))
    for row in rows:
        print("  ".join("-" if row.get(c) is None else str(row.get(c)) for c in columns))


def _config_check(settings: Settings) -> int:
    # SecretStr fields and private attributes never reach this dump; paths to secrets do.
    print(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))
    for warning in settings.permission_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return EXIT_OK
