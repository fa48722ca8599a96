"""A minimal submission relay for packaging/test-deb.sh: implicit TLS, AUTH, mails to files.

    python3 smtp_sink.py --port P --cert server.pem --key server.key \
        --user U --password-file F --outdir DIR

Standard library only (the install test must not depend on the project's dev environment).
Speaks just what faultmail's aiosmtplib client uses: EHLO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA,
RSET, NOOP, QUIT. Each accepted mail becomes DIR/NNNN.eml (envelope in X-Sink-* headers), written
atomically; a wrong password gets 535. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import ssl
import sys
from pathlib import Path

COUNTER = itertools.count(1)


class Session:
    def __init__(self, args: argparse.Namespace, password: str) -> None:
        self.args = args
        self.password = password
        self.authed = False
        self.reset()

    def reset(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []

    def check(self, user: str, password: str) -> bool:
        self.authed = user == self.args.user and password == self.password
        return self.authed


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args, password):
    session = Session(args, password)

    async def reply(line: str) -> None:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    async def readline() -> str:
        raw = await reader.readline()
        if not raw:
            raise ConnectionResetError
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    try:
        await reply("220 faultmail-test-sink ESMTP")
        while True:
            line = await readline()
            verb, _, rest = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                session.reset()
                await reply("250-faultmail-test-sink")
                await reply("250-SIZE 10485760")
                await reply("250-8BITMIME")
                await reply("250-SMTPUTF8")
                await reply("250 AUTH PLAIN LOGIN")
            elif verb == "AUTH":
                method, _, initial = rest.partition(" ")
                if method.upper() == "PLAIN":
                    if not initial:
                        await reply("334 ")
                        initial = await readline()
                    parts = base64.b64decode(initial).decode().split("\0")
                    ok = len(parts) == 3 and session.check(parts[1], parts[2])
                elif method.upper() == "LOGIN":
                    if initial:
                        user = base64.b64decode(initial).decode()
                    else:
                        await reply("334 VXNlcm5hbWU6")
                        user = base64.b64decode(await readline()).decode()
                    await reply("334 UGFzc3dvcmQ6")
                    ok = session.check(user, base64.b64decode(await readline()).decode())
                else:
                    await reply("504 5.5.4 unrecognised authentication type")
                    continue
                await reply("235 2.7.0 ok" if ok else "535 5.7.8 authentication failed")
            elif verb == "MAIL":
                if not session.authed:
                    await reply("530 5.7.0 authentication required")
                    continue
                session.reset()
                session.sender = rest.split(":", 1)[1].split()[0].strip("<>")
                await reply("250 2.1.0 ok")
            elif verb == "RCPT":
                session.recipients.append(rest.split(":", 1)[1].split()[0].strip("<>"))
                await reply("250 2.1.5 ok")
            elif verb == "DATA":
                if session.sender is None or not session.recipients:
                    await reply("503 5.5.1 MAIL and RCPT first")
                    continue
                await reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while True:
                    raw = await reader.readline()
                    if not raw:
                        raise ConnectionResetError
                    if raw in (b".\r\n", b".\n"):
                        break
                    lines.append(raw[1:] if raw.startswith(b"..") else raw)
                number = next(COUNTER)
                head = (
                    f"X-Sink-From: {session.sender}\r\n"
                    f"X-Sink-To: {', '.join(session.recipients)}\r\n"
                ).encode()
                out = Path(args.outdir) / f"{number:04d}.eml"
                tmp = out.with_suffix(".tmp")
                tmp.write_bytes(head + b"".join(lines))
                os.replace(tmp, out)
                print(
                    f"sink: mail {number} from {session.sender} to {session.recipients}", flush=True
                )
                session.reset()
                await reply(f"250 2.0.0 ok queued as {number}")
            elif verb == "RSET":
                session.reset()
                await reply("250 2.0.0 ok")
            elif verb == "NOOP":
                await reply("250 2.0.0 ok")
            elif verb == "QUIT":
                await reply("221 2.0.0 bye")
                break
            else:
                await reply("502 5.5.2 command not implemented")
    except (ConnectionResetError, ssl.SSLError, OSError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("port", "cert", "key", "user", "password-file", "outdir"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    password = Path(args.password_file).read_text(encoding="utf-8").splitlines()[0]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args, password), "127.0.0.1", int(args.port), ssl=context
    )
    print(f"sink: listening on 127.0.0.1:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
