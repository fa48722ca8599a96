"""faultmail(1) rendered as roff from the argument parser, so the man page lists every command,
action and option the installed command has.

The .deb ships packaging/debian/faultmail.1, written by this module and checked against it by
tests/test_docs.py and packaging/build-deb.sh. After changing the command line, regenerate it:

    .venv/bin/python -m agent.cli.manpage > packaging/debian/faultmail.1
"""

from __future__ import annotations

import argparse
import sys

from agent.cli.parser import build_parser, commands

# --config is described once, under OPTIONS: its default is read from the environment when the
# parser is built, which must not leak into a page rendered on a build machine.
_GLOBAL_OPTIONS = {"--config", "-h", "--help"}

_HEAD = r""".TH FAULTMAIL 1 "" "faultmail" "User Commands"
.SH NAME
faultmail \- edge alert mailer: MQTT device faults to e\-mail
"""

_DESCRIPTION = r""".SH DESCRIPTION
.B faultmail
subscribes to device fault reports on an MQTT broker, stores every alert in a
durable SQLite outbox before acknowledging it to the broker, and delivers it as
e\-mail through authenticated, TLS\-protected SMTP submission to allowlisted
internal addresses.
.PP
On Debian the daemon runs as the
.B faultmail
user under the systemd unit
.IR faultmail.service ;
its log goes to the journal
.RB ( "journalctl \-u faultmail" ).
The other commands read the outbox (read\-only, safe while the daemon runs) or
change the queue; run them as root.
.B faultmail \-\-help
and
.B faultmail
.I command
.B \-\-help
list every command and option of the installed version.
"""

_TAIL = r""".TP
.BI \-\-config " path"
The configuration file (default:
.B $FAULTMAIL_CONFIG
or
.IR /etc/faultmail/faultmail.toml ).
Every command that reads the configuration or the outbox takes it.
.SH EXIT STATUS
.TP
.B 0
Success; also a listing whose reader stopped early
.RB ( head ,
.BR less ,
.BR "grep \-q" ).
.TP
.B 1
Runtime failure.
.TP
.B 2
Invalid configuration (a missing secret file included, except for
.BR status ,
.BR alerts ,
.BR audit ,
.B queue
and
.BR devices ,
which only read the outbox) or usage error; the message names the key and the
fix. systemd does not restart the daemon then.
.TP
.B 3
The outbox database is damaged; not restarted either.
.SH ENVIRONMENT
.TP
.B FAULTMAIL_CONFIG
The configuration file, unless
.B \-\-config
is given.
.TP
.BI FAULTMAIL_ section __ key
Overrides one setting, e.g.
.BR FAULTMAIL_SMTP__PORT=465 .
.SH FILES
.TP
.I /etc/faultmail/faultmail.toml
The configuration; every setting is described in it.
.TP
.I /etc/faultmail/smtp\-password
The SMTP password (mode 0600, first line). Likewise
.IR dkim.key ,
.IR dkim\-ed25519.key ,
.I mqtt\-password
and
.IR oauth\-client\-secret .
The service receives them as systemd credentials.
.TP
.I /var/lib/faultmail/outbox.db
The outbox database.
.TP
.I /usr/share/doc/faultmail/README.Debian
Setting up a gateway, step by step.
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.exec (5)
"""


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole man page for `parser` (default: faultmail's own)."""
    parser = parser or build_parser()
    listed = [(path, sub, text) for path, sub, text in commands(parser)]
    # Left-aligned and unhyphenated: a synopsis is read as command lines, not as prose.
    out = [_HEAD, ".SH SYNOPSIS\n.nh\n.ad l\n.B faultmail\n.I command\n.RI [ options ]\n"]
    for path, sub, _ in listed:
        if _requires_action(sub):
            continue  # `faultmail dkim` alone is a usage error; its actions are listed
        out.append(f".br\n.B faultmail {_escape(' '.join(path))}\n{_synopsis(sub)}")
    out.append(".ad\n.hy\n")
    out.append(_DESCRIPTION)
    out.append(".SH COMMANDS\n")
    for path, sub, text in listed:
        out.append(f".TP\n.B {_escape(' '.join(path))}\n{_sentence(text)}\n")
        options = [a for a in sub._actions if _documented(a)]
        if options:
            out.append(".RS\n")
            for action in options:
                out.append(f".TP\n{_invocation(action)}\n{_option_help(action)}")
            out.append(".RE\n")
    # The options of `faultmail` itself (--version), then --config, which every command takes.
    out.append(".SH OPTIONS\n")
    for action in parser._actions:
        if action.option_strings and _documented(action):
            out.append(f".TP\n{_invocation(action)}\n{_option_help(action)}")
    out.append(_TAIL)
    return "".join(out)


def _requires_action(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions)


def _documented(action: argparse.Action) -> bool:
    if isinstance(action, argparse._SubParsersAction):
        return False
    return not set(action.option_strings) & _GLOBAL_OPTIONS


def _synopsis(parser: argparse.ArgumentParser) -> str:
    """The options of one command in usage notation: [optional], (one | other) for a required
    choice; "" for a command without any."""
    grouped = {a: g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    parts: list[str] = []
    done: set[int] = set()
    # Options first, then positional arguments, in the order --help shows them.
    ordered = sorted(parser._actions, key=lambda a: not a.option_strings)
    for action in ordered:
        if action.option_strings and action.option_strings[0] in ("-h", "--help"):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        group = grouped.get(action)
        if group is not None:
            if id(group) in done:
                continue
            done.add(id(group))
            inner = " | ".join(_token(a) for a in group._group_actions)
            parts.append(f"({inner})" if group.required else f"[{inner}]")
            continue
        optional = not action.required if action.option_strings else action.nargs == "?"
        parts.append(f"[{_token(action)}]" if optional else _token(action))
    return f"{' '.join(parts)}\n" if parts else ""


def _token(action: argparse.Action) -> str:
    if not action.option_strings:
        return rf"\fI{_escape(_metavar(action))}\fR"
    name = rf"\fB{_escape(action.option_strings[0])}\fR"
    return name if action.nargs == 0 else rf"{name} \fI{_escape(_metavar(action))}\fR"


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return rf"\fI{_escape(_metavar(action))}\fR"
    names = ", ".join(rf"\fB{_escape(o)}\fR" for o in action.option_strings)
    return names if action.nargs == 0 else rf"{names} \fI{_escape(_metavar(action))}\fR"


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _option_help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:
        # As argparse expands it for --help: %(default)s, %(choices)s and the like.
        text = text % {**vars(action), "prog": "faultmail"}
    return f"{_sentence(text)}\n" if text.strip() else ""


def _sentence(text: str) -> str:
    # Verbatim, as --help shows it: one wording of each help text.
    return _escape(text.strip())


def _escape(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    return "\n".join(rf"\&{line}" if line[:1] in ".'" else line for line in text.split("\n"))


if __name__ == "__main__":
    sys.stdout.write(render())
