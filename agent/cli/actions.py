"""The commands that do something: run the daemon, retry or drop mails, block or unblock a
device, send a test mail, write a DKIM key, check the configuration.

Every change to the outbox is audited with the actor (the login behind sudo).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli.common import EXIT_FAILURE, EXIT_OK, actor, open_outbox
from agent.settings import Settings


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Become the daemon: the validated configuration, copied as plain data, is handed to a
    fresh interpreter that replaces this process (same PID, so systemd's notify socket and
    watchdog, and anyone holding the PID, see one process throughout). The daemon then runs
    without pydantic (agent.settings.plain); it starts in agent.app.run_handed_over."""
    from agent.settings.loading import plain_copy
    from agent.settings.plain import HANDOVER_ENV, hand_over

    fd = hand_over(plain_copy(settings))
    os.environ[HANDOVER_ENV] = str(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv: the interpreter's own options too (the package's launcher runs -IS).
    os.execv(sys.executable, sys.orig_argv)


def queue(settings: Settings, args: argparse.Namespace) -> int:
    """queue retry (one mail or every dead one, due now) and queue drop (a pending mail)."""
    now = time.time()
    outbox = open_outbox(settings, readonly=False)
    try:
        if args.queue_command == "retry":
            if not args.all_dead:
                ids = outbox.requeue([args.mail_id], now, actor())
                print(f"re-queued {len(ids)} mail(s): {', '.join(map(str, ids)) or '-'}")
                return EXIT_OK if ids else EXIT_FAILURE
            return requeue_all(outbox, now)
        if outbox.drop(args.mail_id, args.reason, now, actor()):
            print(f"dropped mail {args.mail_id}")
            return EXIT_OK
        print(f"faultmail: mail {args.mail_id} is not pending", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        outbox.close()


def requeue_all(outbox: Any, now: float, chunk: int = 100) -> int:
    """Re-queue every dead mail in chunks, showing progress on stderr (hundreds can be dead
    after a long relay misconfiguration)."""
    dead = outbox.dead_mail_ids()
    done = 0
    for start in range(0, len(dead), chunk):
        done += len(outbox.requeue(dead[start : start + chunk], now, actor()))
        if len(dead) > chunk:
            print(f"\rre-queued {done}/{len(dead)}", end="", file=sys.stderr, flush=True)
    if len(dead) > chunk:
        print(file=sys.stderr)
    print(f"re-queued {done} dead mail(s)")
    return EXIT_OK


def devices(settings: Settings, args: argparse.Namespace) -> int:
    """devices block / unblock: audited, applied by the daemon within a second."""
    outbox = open_outbox(settings, readonly=False)
    try:
        blocking = args.devices_command == "block"
        reason = args.reason if blocking else ""
        if outbox.set_blocked(args.uid, blocking, reason, time.time(), actor()):
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


def send_test(settings: Settings, args: argparse.Namespace) -> int:
    import secrets as random_ids

    from agent.compose import ComposeContext, compose
    from agent.errors import DeliveryError, PolicyRefusal
    from agent.identity import message_id as make_message_id
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
        message=f"Test mail from faultmail on {settings.gateway.id}, sent by {actor()}",
        details={},
        device_ts=None,
        received_at=now,
    )
    # "test" in place of the database instance: a test mail is never stored in the outbox.
    message_id = make_message_id(
        settings.gateway.id, "test", random_ids.token_hex(6), smtp.sender_domain
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
    outbox = open_outbox(settings, readonly=False)
    outbox.record(
        AuditEntry(
            "send_test",
            outcome,
            relay=submitter.relay,
            detail=f"to {to}: {reply} ({message_id}) by {actor()}",
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        ),
        now,
    )
    outbox.close()
    print(f"{'sent' if code == EXIT_OK else 'NOT sent'} to {to} via {submitter.relay}: {reply}")
    print(f"Message-ID: {message_id}")
    return code


def dkim_keygen(args: argparse.Namespace) -> int:
    from agent.signing import keygen

    configured = _configured_dkim(args.config)
    out = args.out or _default_key_path(configured, args.type)
    key_setting = "ed25519_key_file" if args.type == "ed25519" else "private_key_file"
    for name, given in (("selector", args.selector), ("domain", args.domain)):
        if args.type == "ed25519" and name == "selector":
            name = "ed25519_selector"
        if configured.get(name) and configured[name] != given:
            print(
                f"faultmail: warning: dkim.{name} in {args.config} is {configured[name]!r}, not "
                f"{given!r}: the daemon signs with the configured one",
                file=sys.stderr,
            )
    try:
        key = keygen(args.selector, args.domain, out, args.type)
    except FileExistsError:
        print(
            f"faultmail: {out} exists and is never overwritten (its record may be published); "
            "move it aside first, or choose another --out",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except OSError as exc:
        print(
            f"faultmail: cannot write {out}: {exc.strerror or exc}; or give --out PATH",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    owner = f"owner {_user_name(key.path.stat().st_uid)}"
    print(f"private key written to {key.path} (mode 0600, {owner})", file=sys.stderr)
    if configured.get(key_setting) and Path(configured[key_setting]) != key.path:
        print(
            f"faultmail: note: dkim.{key_setting} in {args.config} names "
            f"{configured[key_setting]}, not {key.path}",
            file=sys.stderr,
        )
    print(
        "publish this DNS TXT record (zone-file form; a DNS console takes the quoted strings):",
        file=sys.stderr,
    )
    print(key.zone_line())
    return EXIT_OK


def _configured_dkim(config: Path) -> dict[str, str]:
    """The [dkim] section of the configuration file as written, or nothing when it cannot be
    read: keygen runs before the key exists, when the file does not validate yet."""
    import tomllib

    try:
        with config.open("rb") as fh:
            section = tomllib.load(fh).get("dkim")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(section, dict):
        return {}
    return {k: v for k, v in section.items() if isinstance(v, str)}


def _default_key_path(configured: dict[str, str], kind: str) -> Path:
    """The file the configuration names for this kind of key; a credential name (not a path)
    and an unreadable configuration give the file in /etc/faultmail the package links."""
    from agent.settings.sections import DKIM_KEY_PATHS

    value = configured.get("ed25519_key_file" if kind == "ed25519" else "private_key_file", "")
    return Path(value) if value and Path(value).is_absolute() else Path(DKIM_KEY_PATHS[kind])


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def config_check(settings: Settings, args: argparse.Namespace) -> int:
    # Secrets live in private attributes, which never reach this dump; paths to secrets do.
    print(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))
    for warning in settings.permission_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return EXIT_OK
