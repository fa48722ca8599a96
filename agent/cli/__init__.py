"""The faultmail command: parse arguments → call → print. No business logic here.

    commands    main(): arguments to a handler, configuration errors to exit codes
    parser      the argparse description of every command and option
    reports     read-only listings: alerts, audit, queue, devices, status
    actions     run, queue retry/drop, devices block/unblock, send-test, dkim keygen,
                config check
    common      exit codes, opening the outbox, the actor, printing rows
    manpage     faultmail(1) rendered from the parser

`faultmail run` validates the configuration, then replaces itself (exec, same PID) with the
daemon, handing it the validated configuration as plain data (agent.settings.plain): the
daemon never imports pydantic, and this module imports nothing else before it knows which
of the two it is.

Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage, 3 damaged outbox. Output
piped into a reader that stops early (head, less, grep -q) ends quietly with the code the
command had; a listing cut short that way is 0 (see common.until_reader_leaves).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from agent.settings.plain import HANDOVER_ENV


def main(argv: Sequence[str] | None = None) -> int:
    handed_over = os.environ.pop(HANDOVER_ENV, None)
    if handed_over is not None and argv is None:
        from agent.app import run_handed_over

        return run_handed_over(int(handed_over))
    from agent.cli.commands import main as command

    return command(argv)
