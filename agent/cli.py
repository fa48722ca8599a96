"""The faultmail command: parse arguments → call → print. No business logic here.

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, OutboxError
from agent.models import AlertState
from agent.settings import DEFAULT_CONFIG_PATH, Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("FAULTMAIL_CONFIG", DEFAULT_CONFIG_PATH)),
        help="configuration file (default: $FAULTMAIL_CONFIG or %(default)s)",
    )
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
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"faultmail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "run":
            return _run(settings)
        if args.command == "alerts":
            return _alerts(settings, args)
        if args.command == "audit":
            return _audit(settings, args)
        return _config_check(settings)
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


def _open(settings: Settings) -> Any:
    from agent.app import outbox_path
    from agent.outbox import Outbox

    return Outbox(outbox_path(settings), readonly=True)


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
    print("configuration OK", file=sys.stderr)
    return EXIT_OK
