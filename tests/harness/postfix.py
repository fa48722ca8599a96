"""A real Postfix submission service on a loopback port, private to a test.

What a site's relay looks like, as strict as Debian 12's Postfix 3.7 can be: port-587 style
(STARTTLS required before anything else, ``smtpd_tls_security_level = encrypt``), AUTH only
inside TLS (``smtpd_tls_auth_only``) through Cyrus SASL with a sasldb file, the envelope sender
tied to the login (``reject_sender_login_mismatch``), bare LF refused
(``smtpd_forbid_bare_newline = reject``, the SMTP-smuggling fix backported to 3.7.10, with no
exempt networks: its default exempts ``$mynetworks``), a ``message_size_limit``, a greeting
that is not a fully qualified name refused, and unknown recipients refused. Accepted mail is
delivered by Postfix's ``virtual`` agent into a Maildir per recipient, which the test reads.
Postfix 3.7 can do nothing stricter about line endings: ``reject`` is the strictest value.

The instance has its own ``config_directory``, ``queue_directory`` and ``data_directory``
(``postfix -c DIR start`` / ``stop``), logs to a file (``maillog_file``) instead of syslog and
never touches the system's Postfix in /etc/postfix, which may be running on port 25.

Postfix's master must be started as root, and its daemons run as the ``postfix`` user, which
must reach the queue and the Maildirs: the instance lives in its own 0755 directory under the
system's temporary directory (pytest's tmp dirs are 0700), removed by `close`.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.harness._service import Service
from tests.harness.pki import TestPKI
from tests.harness.ports import LOOPBACK, free_port, port_accepts

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SASLPASSWD2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
MAIL_OWNER = "postfix"
HOSTNAME = "relay.faultmail.test"

# Instances started and not stopped yet, stopped at exit if a test run dies before teardown
# (the master daemonizes, so the harness's Popen reaper does not see it).
_live: set[Postfix] = set()


class PostfixError(RuntimeError):
    """Postfix did not start or stop as asked; the message carries its log."""


@dataclass(frozen=True)
class DeliveredMail:
    """One file from a recipient's Maildir: the bytes as Postfix stored them (LF line ends,
    with the Return-Path, Delivered-To and Received headers it added) and the CRLF form a
    receiver verifies DKIM on (RFC 6376 canonicalization works on CRLF lines)."""

    path: Path
    stored: bytes

    @property
    def wire(self) -> bytes:
        return self.stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.stored, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class Postfix(Service):
    """``postfix -c <dir> start`` with a generated main.cf/master.cf on 127.0.0.1:`port`.

    users: SASL login → password (``user@realm`` logins; the sender address must be the
    login). recipients: the addresses with a Maildir; anything else gets 550.
    """

    def __init__(
        self,
        pki: TestPKI,
        users: dict[str, str],
        *,
        recipients: tuple[str, ...] = ("ops@example.com",),
        message_size_limit: int = 200_000,
        log_copy: Path | None = None,
    ) -> None:
        self.pki = pki
        self.users = dict(users)
        self.recipients = recipients
        self.message_size_limit = message_size_limit
        self.log_copy = log_copy
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix instance needs root (its master, and chown)")
        missing = [p for p in (POSTFIX, SASLPASSWD2) if not os.access(p, os.X_OK)]
        if missing:
            raise PostfixError(
                f"{', '.join(missing)} missing: apt-get install postfix sasl2-bin "
                "libsasl2-modules (.ci/run does)"
            )
        self.host = LOOPBACK
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="faultmail-postfix-"))
        self.root.chmod(0o755)  # the postfix user must traverse it
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.mail_dir = self.root / "mail"
        self.log_path = self.root / "maillog"
        self.ca_file: Path | None = None
        self._started = False
        try:
            self._prepare()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # -- configuration -------------------------------------------------------------------------

    def _prepare(self) -> None:
        owner = pwd.getpwnam(MAIL_OWNER)
        for directory in (self.config_dir, self.queue_dir):
            directory.mkdir(mode=0o755)
        for directory in (self.data_dir, self.mail_dir):
            directory.mkdir(mode=0o700)
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        tls = self.pki.server_cert_files(self.config_dir / "tls")
        self.ca_file = tls.ca
        self._tls = tls
        self._write_sasl(owner)
        # The senders have mailboxes too (smtpd_reject_unlisted_sender), and get the bounces.
        boxes = dict.fromkeys([*self.recipients, *self.users])
        mailboxes = "".join(f"{r} {r.replace('@', '_')}/\n" for r in boxes)
        (self.config_dir / "vmailbox").write_text(mailboxes)
        # Each login may use exactly its own address as envelope sender.
        (self.config_dir / "sender_login").write_text("".join(f"{u} {u}\n" for u in self.users))
        (self.config_dir / "master.cf").write_text(self._master_cf())
        self._write_main_cf(owner)

    def _write_sasl(self, owner: pwd.struct_passwd) -> None:
        sasl_dir = self.config_dir / "sasl"
        sasl_dir.mkdir(mode=0o755)
        sasldb = sasl_dir / "sasldb2"
        for login, password in self.users.items():
            user, _, realm = login.partition("@")
            subprocess.run(
                [SASLPASSWD2, "-p", "-c", "-f", str(sasldb), "-u", realm, user],
                input=password.encode(),
                check=True,
                capture_output=True,
            )
        # smtpd (user postfix) reads it; nobody else may.
        os.chown(sasldb, 0, owner.pw_gid)
        sasldb.chmod(0o640)
        (sasl_dir / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {sasldb}\n"
            "mech_list: PLAIN LOGIN\n"
        )

    def _master_cf(self) -> str:
        # Debian's master.cf, cut to the services this instance uses and with chroot off (the
        # paths are absolute). Columns: service type private unpriv chroot wakeup maxproc.
        return (
            "# generated by tests/harness/postfix.py\n"
            f"{self.host}:{self.port} inet n - n - - smtpd\n"
            "cleanup unix n - n - 0 cleanup\n"
            "qmgr unix n - n 300 1 qmgr\n"
            "tlsmgr unix - - n 1000? 1 tlsmgr\n"
            "rewrite unix - - n - - trivial-rewrite\n"
            "bounce unix - - n - 0 bounce\n"
            "defer unix - - n - 0 bounce\n"
            "trace unix - - n - 0 bounce\n"
            "verify unix - - n - 1 verify\n"
            "flush unix n - n 1000? 0 flush\n"
            "proxymap unix - - n - - proxymap\n"
            "showq unix n - n - - showq\n"
            "error unix - - n - - error\n"
            "retry unix - - n - - error\n"
            "discard unix - - n - - discard\n"
            "virtual unix - n n - - virtual\n"
            "anvil unix - - n - 1 anvil\n"
            "scache unix - - n - 1 scache\n"
            "postlog unix-dgram n - n - 1 postlogd\n"
        )

    def _write_main_cf(self, owner: pwd.struct_passwd) -> None:
        domains = sorted({a.partition("@")[2] for a in (*self.recipients, *self.users)})
        tls = self._tls
        settings = {
            "compatibility_level": "3.6",
            "mail_owner": MAIL_OWNER,
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "myhostname": HOSTNAME,
            "mydomain": "faultmail.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            # Nothing is trusted by address: loopback must authenticate like anyone else.
            "mynetworks": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "smtp_address_preference": "ipv4",
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.root,
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relayhost": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "no",
            # Header rewriting (adding a missing Date, Message-ID) for logged-in clients only,
            # as submission services do; loopback is not special.
            "local_header_rewrite_clients": "permit_sasl_authenticated",
            # Submission: TLS first, then AUTH (never in clear), then mail.
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_cert_file": tls.cert,
            "smtpd_tls_key_file": tls.key,
            "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
            "smtpd_tls_protocols": ">=TLSv1.2",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": self.config_dir / "sasl",
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_sasl_local_domain": "",
            "smtpd_sasl_authenticated_header": "yes",
            "smtpd_sender_login_maps": f"texthash:{self.config_dir / 'sender_login'}",
            "smtpd_client_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_sender_restrictions": "reject_sender_login_mismatch",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
            # Strict protocol: RFC 5321 2.3.8 says lines end in CRLF; a bare LF is refused
            # (Postfix 3.7.11's "reject"), and nothing is exempt from that.
            "smtpd_forbid_bare_newline": "reject",
            "smtpd_forbid_bare_newline_exclusions": "",
            "smtpd_forbid_unauth_pipelining": "yes",
            "strict_rfc821_envelopes": "yes",
            "smtpd_helo_required": "yes",
            # A greeting like "localhost" is refused, logged in or not (at RCPT, as Postfix
            # delays every rejection to there).
            "smtpd_helo_restrictions": (
                "reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname"
            ),
            "smtpd_reject_unlisted_sender": "yes",
            "message_size_limit": self.message_size_limit,
            "mailbox_size_limit": 0,
            "virtual_mailbox_domains": ", ".join(domains),
            "virtual_mailbox_base": self.mail_dir,
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_minimum_uid": owner.pw_uid,
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "smtpd_error_sleep_time": "0",
            "in_flow_delay": "0",
        }
        text = "# generated by tests/harness/postfix.py\n" + "".join(
            f"{key} = {value}\n" for key, value in settings.items()
        )
        (self.config_dir / "main.cf").write_text(text)

    # -- lifecycle -----------------------------------------------------------------------------

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    @property
    def running(self) -> bool:
        return self._started

    def start(self, timeout: float = 20.0) -> Postfix:
        """``postfix start`` (it waits for the master's initialisation) and wait for the port;
        a port taken meanwhile is replaced by another, twice at most."""
        for attempt in range(3):
            seen = len(self.log_text())
            result = self._postfix("start")
            if result.returncode == 0 and self._wait_for_port(timeout):
                self._started = True
                _live.add(self)
                return self
            self._postfix("stop")
            in_use = "Address already in use" in self.log_text()[seen:]
            if not in_use or attempt == 2:
                raise PostfixError(
                    f"postfix start exited with {result.returncode}:\n"
                    f"{result.stdout}{result.stderr}\n{self.log_text()}"
                )
            self.port = free_port()
            (self.config_dir / "master.cf").write_text(self._master_cf())
        raise AssertionError("unreachable")

    def _wait_for_port(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_accepts(self.host, self.port, timeout=0.2):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """``postfix stop``: the master ends its daemons and exits (within 5 s, or killed)."""
        if not self._started:
            return
        result = self._postfix("stop")
        self._started = False
        _live.discard(self)
        if result.returncode != 0:
            raise PostfixError(f"postfix stop: {result.stdout}{result.stderr}")

    def close(self) -> None:
        """`stop`, keep a copy of the log (log_copy) and remove the instance's directory."""
        try:
            self.stop()
        finally:
            if self.log_copy is not None and self.log_path.exists():
                self.log_copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log_path, self.log_copy)
            shutil.rmtree(self.root, ignore_errors=True)

    # -- inspection ----------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maildir(self, recipient: str = "ops@example.com") -> list[DeliveredMail]:
        """The mails delivered to recipient so far, oldest first."""
        new = self.mail_dir / recipient.replace("@", "_") / "new"
        if not new.is_dir():
            return []
        paths = sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [DeliveredMail(p, p.read_bytes()) for p in paths]

    def wait_for(
        self, n: int, recipient: str = "ops@example.com", timeout: float = 20.0
    ) -> list[DeliveredMail]:
        """Wait until recipient's Maildir holds n mails; PostfixError (with the log) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            mails = self.maildir(recipient)
            if len(mails) >= n:
                return mails
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"{len(mails)} of {n} mails in {recipient}'s Maildir after {timeout} s:\n"
                    f"{self.log_text()}"
                )
            time.sleep(0.1)

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<Postfix {self.host}:{self.port} {state} {self.root}>"


@atexit.register
def _stop_all() -> None:
    for instance in list(_live):
        instance.close()
