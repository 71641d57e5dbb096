"""A subscriber's voicemail folder on the voicemail store's IMAP server: sign in, list the voice
messages, fetch one's recording, mark it heard, delete it.

Theory of operation:

- Each call opens its own connection (implicit TLS, the server's certificate checked against
  the endpoint's host name), authenticates and closes: the pages run in FastAPI's thread pool,
  an imaplib connection is not thread-safe, and the IMAP server checks the password on every
  request (a changed password ends the session at once).  Every socket operation has a timeout.
- The mailbox name never reaches the protocol as text: it is checked against a strict pattern
  (:func:`parse_mailbox`) and sent, with the password, inside AUTHENTICATE PLAIN (RFC 4616),
  base64, so neither can inject an IMAP command.  Message numbers are UIDs, sent as integers.
- A voice message is any message of the folder; what the page shows comes from the headers
  voicemail systems write (Asterisk's ``X-Asterisk-VM-*``, and the older
  ``X-Asterisk-CallerID``), else From and Date, and the duration from the WAV header of the
  first audio part when no header says it (:func:`describe`).
- Heard is IMAP's ``\\Seen`` (what Asterisk's IMAP storage reads as "old"); reading a message
  uses BODY.PEEK, so listening alone marks nothing.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import ipaddress
import re
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

from sipzone.model.errors import InvalidValue, SipzoneError
from sipzone.model.names import parse_domain

FOLDER = "INBOX"  # where Asterisk's IMAP storage (imapfolder=INBOX) and most others deliver
TIMEOUT = 10.0  # seconds for connecting and for each IMAP exchange
LISTED = 200  # newest messages a page lists
_LOCAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
_FETCHED = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


class MailboxError(SipzoneError):
    """The voicemail store said no, or could not be reached."""


class WrongCredentials(MailboxError):
    """The IMAP server refused the mailbox and password (or the mailbox name is not one)."""


class StoreUnavailable(MailboxError):
    """The IMAP server did not answer, or broke the protocol."""


def parse_mailbox(text: str, email_domain: str | None) -> str:
    """A mailbox as typed: ``1001`` (under the email domain) or ``1001@example.com``; the
    local part letters, digits and ``._+-``, the domain a DNS name.  InvalidValue otherwise."""
    local, at, domain = text.strip().partition("@")
    if not _LOCAL.match(local) or (at and not domain) or (not at and not email_domain):
        raise InvalidValue("give your mailbox as 1001@example.com")
    try:
        domain = parse_domain(domain).text if at else str(email_domain)
    except SipzoneError:
        raise InvalidValue("give your mailbox as 1001@example.com") from None
    return f"{local}@{domain}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the IMAP server is: ``name`` its certificate's name, ``addresses`` where to
    connect (empty: resolve ``name``)."""

    name: str
    port: int
    addresses: tuple[str, ...] = ()


class _Imap(imaplib.IMAP4_SSL):
    """IMAP over TLS to one address, the certificate checked against the endpoint's name."""

    def __init__(self, address: str, endpoint: Endpoint, context: ssl.SSLContext) -> None:
        self._address = address
        super().__init__(endpoint.name, endpoint.port, ssl_context=context, timeout=TIMEOUT)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), timeout)
        wrapped: ssl.SSLSocket = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        return wrapped


def connect(endpoint: Endpoint, context: ssl.SSLContext) -> imaplib.IMAP4_SSL:
    """A TLS connection to ``endpoint``: its addresses in turn, else its name resolved."""
    problem: Exception | None = None
    for address in endpoint.addresses or (endpoint.name,):
        try:
            return _Imap(address, endpoint, context)
        except (OSError, imaplib.IMAP4.error) as exc:  # ssl.SSLError is an OSError
            problem = exc
    raise StoreUnavailable(f"the voicemail store at {endpoint.name}:{endpoint.port}: {problem}")


@dataclass(frozen=True, slots=True)
class VoiceMessage:
    """What the voicemail page shows of one message."""

    uid: int
    caller: str
    date: datetime | None
    duration: float | None  # seconds
    heard: bool


@dataclass(frozen=True, slots=True)
class Recording:
    content_type: str
    data: bytes


class Mailbox:
    """One signed-in session with the IMAP server: ``with Mailbox.open(...) as box: ...``."""

    def __init__(self, imap: imaplib.IMAP4_SSL) -> None:
        self.imap = imap

    @classmethod
    def open(
        cls,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        mailbox: str,
        password: str,
        client: str | None = None,
    ) -> Mailbox:
        """Sign in as ``mailbox`` and select the voicemail folder.  ``client`` (the browser's
        address) goes to the server first in an RFC 2971 ID, where it offers ID: Dovecot takes
        it from its ``login_trusted_networks`` and then logs and penalises failed sign-ins per
        browser, not per sipzone node."""
        imap = connect(endpoint, context)
        try:
            origin = _address(client)
            if origin and "ID" in imap.capabilities:
                imap.xatom("ID", f'("x-originating-ip" "{origin}")')
            secret = f"\0{mailbox}\0{password}".encode()
            try:
                imap.authenticate("PLAIN", lambda _challenge: secret)
            except imaplib.IMAP4.abort as exc:  # the connection broke: no answer on the password
                raise StoreUnavailable(f"the voicemail store broke off: {exc}") from None
            except imaplib.IMAP4.error:
                raise WrongCredentials("wrong mailbox or password") from None
            status, _ = imap.select(FOLDER)
            if status != "OK":
                raise StoreUnavailable(f"the voicemail store has no folder {FOLDER}")
        except (OSError, imaplib.IMAP4.error) as exc:
            _close(imap)
            raise StoreUnavailable(f"the voicemail store failed: {exc}") from None
        except BaseException:
            _close(imap)
            raise
        return cls(imap)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        _close(self.imap)

    def _ok(self, command: str, call: Callable[[], tuple[str, list[Any]]]) -> list[Any]:
        """What ``call`` (an imaplib command) answered; StoreUnavailable unless OK."""
        try:
            status, data = call()
        except (OSError, imaplib.IMAP4.error) as exc:
            raise StoreUnavailable(f"the voicemail store failed {command}: {exc}") from None
        if status != "OK":
            raise StoreUnavailable(f"the voicemail store refused {command}")
        return list(data)

    def _uid(self, command: str, *args: str) -> list[Any]:
        return self._ok(command, lambda: self.imap.uid(command, *args))

    def messages(self) -> list[VoiceMessage]:
        """The newest :data:`LISTED` messages, newest first."""
        [found] = self._uid("SEARCH", "ALL")
        uids = [int(u) for u in bytes(found or b"").split()][-LISTED:]
        if not uids:
            return []
        spec = ",".join(map(str, uids))
        headers = dict(self._fetch(spec, "BODY.PEEK[HEADER]"))
        listed = {uid: describe(uid, flags, _parse(h)) for uid, (flags, h) in headers.items()}
        untimed = [uid for uid, m in listed.items() if m.duration is None]
        if untimed:  # no header says how long: read the recording's WAV header
            for uid, (flags, whole) in self._fetch(",".join(map(str, untimed)), "BODY.PEEK[]"):
                listed[uid] = describe(uid, flags, _parse(whole))
        return sorted(listed.values(), key=lambda m: m.uid, reverse=True)

    def _fetch(self, uids: str, item: str) -> Iterator[tuple[int, tuple[frozenset[str], bytes]]]:
        data = self._uid("FETCH", uids, f"(UID FLAGS {item})")
        for i, part in enumerate(data):
            if not isinstance(part, tuple):
                continue
            meta = bytes(part[0])
            after = data[i + 1] if i + 1 < len(data) else b""
            meta += after if isinstance(after, bytes) else b""  # FLAGS may follow the literal
            uid, flags = _FETCHED.search(meta), _FLAGS.search(meta)
            if uid is not None:
                words = frozenset(flags.group(1).decode().split()) if flags else frozenset()
                yield int(uid.group(1)), (words, bytes(part[1]))

    def recording(self, uid: int) -> Recording | None:
        """The first audio part of message ``uid``; None when it has none (or is gone)."""
        for _uid, (_flags, whole) in self._fetch(str(uid), "BODY.PEEK[]"):
            return _audio(_parse(whole))
        return None

    def mark_heard(self, uid: int) -> None:
        self._uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Seen)")

    def delete(self, uid: int) -> None:
        """Delete message ``uid`` and expunge it alone where the server can (UIDPLUS)."""
        self._uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in self.imap.capabilities:
            self._uid("EXPUNGE", str(uid))
        else:
            self._ok("EXPUNGE", self.imap.expunge)


def _address(text: str | None) -> str | None:
    """``text`` as an IP address, or None: nothing else may reach the ID command."""
    try:
        return str(ipaddress.ip_address(text or ""))
    except ValueError:
        return None


def _close(imap: imaplib.IMAP4_SSL) -> None:
    try:
        imap.logout()
    except (OSError, imaplib.IMAP4.error):
        imap.shutdown()


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _audio(message: EmailMessage) -> Recording | None:
    for part in message.walk():
        if part.get_content_maintype() == "audio":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                kind = part.get_content_type()
                return Recording("audio/wav" if kind in WAV_TYPES else kind, data)
    return None


WAV_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})


def describe(uid: int, flags: frozenset[str], message: EmailMessage) -> VoiceMessage:
    """What the page shows of ``message`` (see the module docstring)."""
    heard = "\\Seen" in flags
    return VoiceMessage(uid, _caller(message), _date(message), _duration(message), heard)


def _header(message: EmailMessage, *names: str) -> str | None:
    for name in names:
        value = message.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _caller(message: EmailMessage) -> str:
    number = _header(message, "X-Asterisk-VM-Caller-ID-Num", "X-Asterisk-CallerID")
    name = _header(message, "X-Asterisk-VM-Caller-ID-Name", "X-Asterisk-CallerIDName")
    if number or name:
        return f"{name} <{number}>" if name and number and name != number else name or number or ""
    display, address = parseaddr(str(message.get("From", "")))
    return display or address or "unknown"


def _date(message: EmailMessage) -> datetime | None:
    epoch = _header(message, "X-Asterisk-VM-Orig-time")
    if epoch and epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), UTC)
    text = _header(message, "Date")
    try:
        return parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError):
        return None


def _duration(message: EmailMessage) -> float | None:
    seconds = _header(message, "X-Asterisk-VM-Duration")
    if seconds and seconds.isdigit():
        return float(seconds)
    if message.is_multipart():
        recording = _audio(message)
        if recording is not None:
            return wav_duration(recording.data)
    return None


def wav_duration(data: bytes) -> float | None:
    """Seconds of a RIFF/WAVE recording: its data chunk over the fmt chunk's byte rate (PCM,
    and the GSM of Asterisk's wav49 alike); None when it is no WAV."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    i, rate = 12, 0
    while i + 8 <= len(data):
        chunk, size = data[i : i + 4], int(struct.unpack_from("<I", data, i + 4)[0])
        if chunk == b"fmt " and size >= 12 and i + 20 <= len(data):
            rate = int(struct.unpack_from("<I", data, i + 16)[0])
        elif chunk == b"data" and rate:
            return min(size, len(data) - i - 8) / rate
        i += 8 + size + (size & 1)
    return None


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The (first, last) octets a ``Range: bytes=...`` header asks of ``length`` octets (one
    range: what media elements send); None for the whole; ValueError when unsatisfiable."""
    found = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if found is None or not any(found.groups()):
        return None
    first, last = found.groups()
    if not first:  # the last N octets
        start, end = max(0, length - int(last)), length - 1
    else:
        start, end = int(first), min(int(last), length - 1) if last else length - 1
    if start >= length or start > end:
        raise ValueError(f"bytes {header} of {length}")
    return start, end
