"""Micro benchmark: the CPU of composing one mail (issue 18).

    .venv/bin/python -m tests.bench.micro_compose [mails] [--profile]

Composes and serialises (compose(...).as_bytes(), as the submitter sends it) a typical
one-alert mail from 30 devices in turn, in English with a local timezone, after a warm-up.
Prints CPU microseconds per mail; --profile adds a cProfile of the loop (top 25, cumulative).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from agent.compose import ComposeContext, compose, load_templates
from agent.models import Alert, FaultState, Mail, Severity


def _mails(count: int) -> list[Mail]:
    mails = []
    for i in range(count):
        alert = Alert(
            id=1000 + i,
            topic=f"devices/pump-{i % 30:03d}/fault",
            uid=f"pump-{i % 30:03d}",
            seq=i,
            code=f"E{i % 4}",
            severity=Severity.ERROR,
            fault_state=FaultState.ACTIVE,
            message=f"Overpressure in loop {i % 7}",
            details={"bar": 12.5, "valve": "open"},
            device_ts=1_800_000_000.0 + i,
            received_at=1_800_000_001.0 + i,
        )
        mails.append(
            Mail(
                id=i + 1,
                message_id=f"<faultmail.gw-1.abc.{i + 1}@example.com>",
                created_at=1_800_000_001.5 + i,
                recipients=("ops@example.com",),
                attempts=0,
                alerts=(alert,),
                thread_root=f"<faultmail.gw-1.abc.{i % 30 + 1}@example.com>",
            )
        )
    return mails


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv and argv[0].isdigit() else 3000
    ctx = ComposeContext(
        sender="Gateway <gw@example.com>",
        gateway_id="gw-1",
        site="Brno",
        timezone="Europe/Prague",
        runbook_default="https://wiki.example.com/runbooks/{code}",
        templates=load_templates(),
    )
    mails = _mails(count)
    now = 1_800_000_010.0
    for mail in mails[:200]:
        compose(mail, ctx, now).as_bytes()

    def loop() -> None:
        for i, mail in enumerate(mails):
            compose(mail, ctx, now + i).as_bytes()

    start = time.process_time()
    loop()
    per_mail = (time.process_time() - start) / count * 1e6
    print(f"compose + as_bytes: {per_mail:.0f} us CPU per mail ({count} mails)")
    if "--profile" in argv:
        profile = cProfile.Profile()
        profile.runcall(loop)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main(sys.argv[1:])
