"""The faultmail command line as an argparse parser: every command, action and option.

The one description of the command line: main() parses with it, and the man page
(agent.cli.manpage) and the documentation tests walk it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent.models import AlertState
from agent.settings import DEFAULT_CONFIG_PATH

# What --json prints: JSON Lines (https://jsonlines.org), not one JSON document.
JSON_LINES_HELP = (
    "JSON Lines: one JSON object per line (not one JSON document: read it line by line, "
    "e.g. jq -c . or json.loads per line); times are RFC 3339 UTC"
)


def build_parser() -> argparse.ArgumentParser:
    """The whole faultmail command line; the man page is rendered from it too."""
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
    parser.add_argument(
        "--version", action=_Version, help="print the installed faultmail version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")

    alerts = sub.add_parser("alerts", parents=[common], help="list alerts and their outcome")
    alerts.add_argument("--json", action="store_true", help=JSON_LINES_HELP)
    alerts.add_argument("--uid", help="only this device")
    alerts.add_argument("--state", choices=[s.value for s in AlertState])
    alerts.add_argument(
        "--since", type=time_arg, default=0.0, help="RFC 3339 time or epoch seconds"
    )

    audit = sub.add_parser("audit", parents=[common], help="list send attempts and decisions")
    audit.add_argument("--json", action="store_true", help=JSON_LINES_HELP)
    audit.add_argument("--since", type=time_arg, default=0.0, help="RFC 3339 time or epoch seconds")

    queue = sub.add_parser("queue", parents=[common], help="pending and dead mails; retry, drop")
    queue.add_argument("--json", action="store_true", help=JSON_LINES_HELP)
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
    devices.add_argument("--json", action="store_true", help=JSON_LINES_HELP)
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

    silence = sub.add_parser(
        "silence", parents=[common], help="silences: hold a device's mails for a while (audited)"
    )
    silence.add_argument("--json", action="store_true", help=JSON_LINES_HELP)
    silence_sub = silence.add_subparsers(dest="silence_command", metavar="ACTION")
    add = silence_sub.add_parser(
        "add", parents=[nested], help="silence a device (pattern) and optionally a code"
    )
    add.add_argument("--device", required=True, help="device UID or shell-style pattern (pump-*)")
    add.add_argument("--code", default="*", help="fault code or pattern (default: every code)")
    span = add.add_mutually_exclusive_group(required=True)
    span.add_argument("--for", dest="for_", metavar="DURATION", help="e.g. 30m, 2h, 1d")
    span.add_argument("--until", metavar="TIME", help="RFC 3339 time or epoch seconds")
    add.add_argument("--reason", required=True, help="why; in the notices and the audit log")
    listing = silence_sub.add_parser(
        "list", parents=[nested], help="every silence (same as no action)"
    )
    listing.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=JSON_LINES_HELP
    )
    expire = silence_sub.add_parser(
        "expire", parents=[nested], help="end a silence now (audited; its summary is mailed)"
    )
    expire.add_argument("silence_id", type=int)
    ack = sub.add_parser(
        "ack",
        parents=[common],
        help="acknowledge an open problem: no repeat follow-ups until it resolves or escalates",
    )
    ack.add_argument(
        "thread", nargs="+", metavar="THREAD", help="DEVICE CODE, DEVICE/CODE or an alert id"
    )
    ack.add_argument("--by", help="who acknowledges (default: the login behind sudo, or yours)")
    ack.add_argument("--note", default="", help="shown in the next mail and the audit log")
    status = sub.add_parser(
        "status",
        parents=[common],
        help="is the daemon running; queue figures; last successful send",
    )
    status.add_argument(
        "--json", action="store_true", help="one JSON object; times are RFC 3339 UTC"
    )

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
        "keygen",
        parents=[common],
        help="write a new private key (root-only, 0600) and print the DNS TXT record to publish",
    )
    keygen.add_argument("--selector", required=True, help="e.g. gw2026")
    keygen.add_argument("--domain", required=True, help="the From domain, e.g. example.com")
    keygen.add_argument(
        "--type",
        choices=["rsa", "ed25519"],
        default="rsa",
        help="rsa (2048 bits, default) or ed25519 (RFC 8463)",
    )
    keygen.add_argument(
        "--out",
        type=Path,
        help="key file, never overwritten (default: dkim.private_key_file, or "
        "dkim.ed25519_key_file for --type ed25519, from --config; without a readable config "
        "/etc/faultmail/dkim.key or /etc/faultmail/dkim-ed25519.key)",
    )

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser(
        "check", parents=[common], help="validate and print the effective config, secrets redacted"
    )
    return parser


class _Version(argparse.Action):
    """--version: looked up only when asked for (importlib.metadata reads the installed
    distributions), so every other command starts as fast as before."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"faultmail {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version (the .deb's bundle, the virtualenv); from a bare
    source tree, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("faultmail")
    except metadata.PackageNotFoundError:
        pass
    import tomllib

    try:
        with (Path(__file__).resolve().parents[2] / "pyproject.toml").open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def time_arg(value: str) -> float:
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


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command and action under `parser`, depth first in the order they were added:
    (words after `faultmail`, its parser, its one-line help)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            yield (*path, name), sub, helps.get(name, "")
            yield from commands(sub, (*path, name))
