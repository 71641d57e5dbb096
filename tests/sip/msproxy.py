"""A simulated Microsoft Teams Direct Routing SIP proxy (``sip.pstnhub.microsoft.com``) for
the tests: a TLS server on a loopback address with a certificate of the tests' CA, requiring the
SBC's client certificate, checking Microsoft's rules on every message it receives, and
answering OPTIONS (200, or 503 with Retry-After when told to).

Every violation is recorded in :attr:`MicrosoftProxy.violations`; a test asserts it is empty.
The rules checked on each request (Teams docs: "Direct Routing SIP protocol", "Configure a
Session Border Controller for multiple tenants"):

* only the first Contact counts, and its host is a name, never an address, covered by the
  certificate the SBC presented (exact or one-label wildcard);
* no Record-Route names an address; when Record-Route and Contact are both present, the top
  Record-Route and the Contact carry the same FQDN;
* an OPTIONS has ``Contact: <sip:FQDN:PORT;transport=tls>`` and ``X-MS-SBC``;
* no ``sips:`` URI and no ``Replaces``: neither the header nor ``replaces`` in Supported or
  Require.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from sipzone.model.certificates import NameIndex
from sipzone.sip.message import (
    Request,
    Response,
    StreamReader,
    parse_address,
    parse_uri,
    split_addresses,
)
from tests.tlscerts import Issued

_CONTACT_OPTIONS = re.compile(rb"<sip:([a-z0-9.-]+):(\d+);transport=tls>\Z", re.I)


@dataclass
class Received:
    """A request the proxy received: when, the message, the SBC's certificate names, and the
    connection it came on (its number in the proxy's order, the ones it dialled included)."""

    at: float
    request: Request
    client_names: tuple[str, ...]
    conn: int = 0


@dataclass
class MicrosoftProxy:
    """One Microsoft SIP proxy (``name``) listening on ``host`` (a loopback address)."""

    name: str
    cert: Issued
    ca_file: str
    host: str = "127.0.0.1"
    port: int = 0
    unavailable: int | None = None  # answer OPTIONS 503 with this Retry-After
    received: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)  # to requests we sent

    def start(self) -> MicrosoftProxy:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert.chain), str(self.cert.key))
        context.load_verify_locations(cafile=self.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as Microsoft requires

        def sni(_sock: object, name: str | None, _ctx: object) -> None:
            self.server_names.append(name)

        context.sni_callback = sni
        self._context = context
        self._sock = socket.create_server((self.host, self.port))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._conns: list[Sender] = []
        self._numbers = itertools.count()  # connections, in the order they came
        self._threads[0].start()
        return self

    @property
    def uri(self) -> str:
        return f"sip:{self.name}:{self.port};transport=tls"

    @property
    def contact(self) -> str:
        """Our Contact in dialogs: a Microsoft name the SBC never resolves (it uses the flow)."""
        return f"sip:sip-du-a-eu.pstnhub.microsoft.com:{self.port};transport=tls"

    def send(self, data: bytes) -> None:
        """A request of ours over the connection the SBC opened (the last one)."""
        self._conns[-1].sendall(data)

    def dial(self, port: int, server_name: str, cert: Issued) -> Sender:
        """A connection of ours to the SBC at 127.0.0.1:``port`` (SNI ``server_name``, our
        certificate ``cert``), read by a thread of its own like the ones the SBC opens."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(str(cert.chain), str(cert.key))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn = context.wrap_socket(raw, server_hostname=server_name)
        sender = Sender(conn, next(self._numbers))
        self._conns.append(sender)
        server = conn.getpeercert() or {}
        names = tuple(v for k, v in server.get("subjectAltName", ()) if k == "DNS")
        thread = threading.Thread(target=self._read, args=(sender, names), daemon=True)
        self._threads.append(thread)
        thread.start()
        return sender

    def responses_to(self, call_id: bytes) -> list[Response]:
        return [r for r in self.responses if r.fields.get(b"Call-ID") == call_id]

    def requests(self, method: str) -> list[Request]:
        return [r.request for r in self.received if r.request.method == method]

    def options(self) -> list[Received]:
        return [r for r in self.received if r.request.method == "OPTIONS"]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.conn.close()
        for thread in self._threads:
            thread.join(5)

    # -- serving ------------------------------------------------------------------------------

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # no or a bad client certificate: refused, as Microsoft does
            return
        sender = Sender(conn, next(self._numbers))
        self._conns.append(sender)
        cert = conn.getpeercert() or {}
        names = tuple(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")
        self._read(sender, names)

    def _read(self, sender: Sender, names: tuple[str, ...]) -> None:
        conn = sender.conn
        reader = StreamReader()
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                with sender.lock:  # OpenSSL: no read and write on one connection at once
                    data = conn.recv(65536)
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError):
                return
            if not data:
                return
            reader.receive_data(data)
            while (message := reader.next_message()) is not None:
                if isinstance(message, Response):
                    self.check(message, names)
                    self.responses.append(message)
                elif isinstance(message, Request):
                    self.received.append(Received(time.monotonic(), message, names, sender.number))
                    self.check(message, names)
                    answer = self.answer(message)
                    if answer:
                        try:
                            sender.sendall(answer)
                        except (ssl.SSLError, OSError):
                            return  # the SBC closed it meanwhile (an edge restart)

    def answer(self, request: Request) -> bytes:
        if request.method == "INVITE":
            rr = request.fields.get(b"Record-Route")
            extra = [f"Record-Route: {rr.decode()}"] if rr else []
            return reply(request, 200, "OK", f"Contact: <{self.contact}>", *extra)
        if request.method == "BYE":
            return reply(request, 200, "OK")
        if request.method != "OPTIONS":
            return b""
        if self.unavailable is not None:
            return reply(request, 503, "Service Unavailable", f"Retry-After: {self.unavailable}")
        return reply(request, 200, "OK")

    # -- Microsoft's rules --------------------------------------------------------------------

    def check(self, request: Request | Response, client_names: tuple[str, ...]) -> None:
        """Microsoft's rules on a message; ``client_names``: the names of the certificate the
        SBC presented (as client or as server)."""
        fields = request.fields
        method = request.method if isinstance(request, Request) else "response"
        problems = []
        raw = (
            request.start_line
            + b"\r\n"
            + b"\r\n".join(name + b": " + value for _, name, value in request.headers())
        )
        if b"sips:" in raw.lower():
            problems.append("a sips: URI")
        if b"Replaces" in fields:
            problems.append("Replaces")
        for key in (b"Supported", b"Require"):
            if b"replaces" in fields.get(key, b"").lower():
                problems.append(f"replaces in {key.decode()}")
        contact_host = None
        contact = fields.get(b"Contact")
        if contact is not None:
            first = parse_address(split_addresses(contact)[0], "Contact").uri
            contact_host = (parse_uri(first).host or b"").decode()
            if method == "OPTIONS" and not _CONTACT_OPTIONS.match(contact):
                problems.append(f"OPTIONS Contact {contact!r} is not <sip:FQDN:PORT;transport=tls>")
        elif method in ("OPTIONS", "INVITE"):
            problems.append(f"{method} without Contact")
        if contact_host is not None:
            if _is_address(contact_host):
                problems.append(f"an address in Contact: {contact_host}")
            elif NameIndex([(client_names, True)]).get(contact_host) is None:
                problems.append(
                    f"Contact {contact_host} not covered by the certificate {client_names}"
                )
        record_route = fields.get(b"Record-Route")
        if record_route is not None:
            hosts = [
                (parse_uri(parse_address(rr, "Record-Route").uri).host or b"").decode()
                for rr in split_addresses(record_route)
            ]
            problems += [f"an address in Record-Route: {h}" for h in hosts if _is_address(h)]
            if contact_host is not None and hosts[0] != contact_host:
                problems.append(f"Record-Route {hosts[0]} and Contact {contact_host} differ")
        if method == "OPTIONS" and b"x-ms-sbc" not in fields:
            problems.append("OPTIONS without X-MS-SBC")
        self.violations += [f"{self.name}: {method}: {p}" for p in problems]


class Sender:
    """A TLS connection and the lock its reads and writes take turns by."""

    def __init__(self, conn: ssl.SSLSocket, number: int) -> None:
        self.conn = conn
        self.number = number
        self.lock = threading.Lock()

    def sendall(self, data: bytes) -> None:
        with self.lock:
            self.conn.sendall(data)


def reply(request: Request, status: int, reason: str, *extra: str) -> bytes:
    """A response to ``request`` with its Via, From, To, Call-ID and CSeq."""
    fields = request.fields
    lines = [f"SIP/2.0 {status} {reason}"]
    for key in (b"Via", b"From", b"To", b"Call-ID", b"CSeq"):
        value = fields[key]
        if key == b"To" and b";tag=" not in value:
            value += b";tag=ms1"
        lines.append(key.decode() + ": " + value.decode())
    lines += [*extra, "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
