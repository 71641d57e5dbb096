"""A private Dovecot (Debian ``dovecot-imapd``) for the voicemail tests: IMAP over TLS on a free
loopback port, a throwaway passwd-file of mailboxes, Maildirs under the test's folder; and
voice-message emails whose WAV recordings ``espeak-ng`` speaks, put in with IMAP APPEND as a
voicemail system delivers them."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import trustme

from sipzone.web.mailbox import Endpoint, StoreUnavailable, connect
from tests.conftest import free_port, missing
from tests.tlscerts import Issued, issue

DOVECOT = "/usr/sbin/dovecot"


@dataclass(frozen=True)
class Voice:
    """A spoken recording and how long it is (from its WAV header, by the stdlib)."""

    wav: bytes
    seconds: float


def speak(text: str, where: Path) -> Voice:
    if shutil.which("espeak-ng") is None:
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    path = where / f"voice-{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=60)
    with wave.open(str(path)) as w:
        seconds = w.getnframes() / w.getframerate()
    return Voice(path.read_bytes(), seconds)


def voice_email(
    to: str, voice: Voice, caller_num: str | None, caller_name: str | None, asterisk: bool = True
) -> bytes:
    """A voice message as Asterisk's app_voicemail mails it with IMAP storage (headers and a
    WAV attachment); ``asterisk`` False: a plain email with From and Date only."""
    msg = EmailMessage()
    msg["From"] = f'"{caller_name or "Voicemail"}" <asterisk@pbx.example.com>'
    msg["To"] = to
    msg["Subject"] = f"New voicemail from {caller_num}"
    msg["Date"] = format_datetime(datetime(2026, 11, 20, 14, 5, tzinfo=UTC))
    if asterisk:
        msg["X-Asterisk-VM-Message-Num"] = "1"
        msg["X-Asterisk-VM-Context"] = "default"
        msg["X-Asterisk-VM-Extension"] = to.split("@")[0]
        msg["X-Asterisk-VM-Caller-ID-Num"] = caller_num or ""
        msg["X-Asterisk-VM-Caller-ID-Name"] = caller_name or ""
        msg["X-Asterisk-VM-Duration"] = str(round(voice.seconds))
        recorded = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
        msg["X-Asterisk-VM-Orig-time"] = str(int(recorded.timestamp()))
    msg.set_content("You have a new voice message.")
    msg.add_attachment(voice.wav, maintype="audio", subtype="x-wav", filename="msg0000.wav")
    return msg.as_bytes()


class Dovecot:
    """``dovecot -F`` with its own configuration; :meth:`stop` ends it and what it started."""

    def __init__(self, ca: trustme.CA, host: str, users: dict[str, str]) -> None:
        if not os.access(DOVECOT, os.X_OK):
            missing("dovecot is not installed (apt-get install dovecot-imapd)")
        # Its own folder, not the test's: Dovecot's processes run as nobody, and pytest's
        # folders are root's alone (0700).
        where = self.where = Path(tempfile.mkdtemp(prefix="sipzone-dovecot-"))
        self.host = host
        self.users = users
        self.port = free_port()
        self.ca = ca
        cert: Issued = issue(ca, where / "tls", host)
        nobody = pwd.getpwnam("nobody")
        mail = where / "mail"
        mail.mkdir()
        for path in (where, mail):
            os.chmod(path, 0o755)
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        passwd = where / "passwd"
        passwd.write_text(
            "".join(
                f"{user}:{{PLAIN}}{password}:{nobody.pw_uid}:{nobody.pw_gid}::{mail}/{user}\n"
                for user, password in users.items()
            )
        )
        for path in (cert.chain, cert.key, passwd):
            os.chmod(path, 0o644)
        self.config = where / "dovecot.conf"
        self.config.write_text(
            f"""
base_dir = {where}/run
state_dir = {where}/state
log_path = {where}/dovecot.log
info_log_path = {where}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert.chain}
ssl_key = <{cert.key}
auth_mechanisms = plain
# Refused passwords answer at once (default: 2 s): the sign-in limiter's test makes ten.
auth_failure_delay = 0
# sipzone's web service connects from here: Dovecot takes the browser's address from its ID.
login_trusted_networks = 127.0.0.1/32
default_internal_user = nobody
default_login_user = nobody
first_valid_uid = {nobody.pw_uid}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # No auth process may reach the penalty tracker, so Dovecot adds no delay (2 s doubling
  # to 15 s) after failed sign-ins from an address: the limiter's test makes ten in a row.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
        )
        self.proc = subprocess.Popen(
            [DOVECOT, "-c", str(self.config), "-F"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.context = ssl.create_default_context()
        ca.configure_trust(self.context)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.client("", "").shutdown()
                return
            except StoreUnavailable:  # not listening yet
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dovecot stopped: {self.log()}") from None
                time.sleep(0.1)
        raise RuntimeError(f"dovecot did not start: {self.log()}")

    def log(self) -> str:
        path = self.where / "dovecot.log"
        stopped = self.proc.poll() is not None and self.proc.stderr is not None
        err = self.proc.stderr.read().decode() if stopped and self.proc.stderr else ""
        return (path.read_text() if path.exists() else "") + err

    def client(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        """An imaplib connection (logged in unless ``user`` is empty); the certificate is
        checked against :attr:`host` while the socket goes to loopback."""
        imap = connect(Endpoint(self.host, self.port, ("127.0.0.1",)), self.context)
        if user:
            imap.login(user, password)
        return imap

    def deliver(self, user: str, message: bytes) -> None:
        imap = self.client(user, self.users[user])
        try:
            status, _ = imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()), message)
            assert status == "OK"
        finally:
            imap.logout()

    def flags(self, user: str) -> list[set[str]]:
        """Every message's flags in INBOX, in order."""
        imap = self.client(user, self.users[user])
        try:
            _, [count] = imap.select("INBOX", readonly=True)
            if count == b"0":
                return []
            _, data = imap.fetch("1:*", "(FLAGS)")
            return [{f.decode() for f in imaplib.ParseFlags(item)} for item in data]
        finally:
            imap.logout()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.where, ignore_errors=True)
        shutil.rmtree(self.where, ignore_errors=True)
