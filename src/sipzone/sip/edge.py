"""The edge policy: what to send for each message that arrives, given the current snapshot.

Theory of operation.  The edge is a stateless element (RFC 3261 §16.11): nothing about a
transaction is remembered between messages, so any worker process can handle any message and
a retransmission is handled exactly like the original.

* A request names a *target*: the Request-URI host, or the To host when the Request-URI
  holds an IP literal (a phone that dials the edge's address directly).  The target is
  admitted when the snapshot's matcher admits it; otherwise the edge answers ``403 Domain Not
  Served`` or, for scanners, stays silent.
* OPTIONS to an admitted name is answered here, ``200 OK`` with a Contact that holds the
  matched name (Microsoft Teams checks that it is a name, never an address).
* Every other admitted request goes to the owning tenant's upstream (or the site's): our Via
  on top with a signed branch (below), Max-Forwards decremented,
  ``Record-Route: <sip:NAME;lr>`` on dialog-creating requests, and the tenant header.
* A response whose top Via is ours, and whose branch proves it, loses that Via and goes to the
  next one (its ``received``/``rport``/sent-by, RFC 3261 §18.2.2, RFC 3581).
* A request arriving *from* an upstream (the core's BYE, re-INVITE) is in-dialog: our Route is
  popped and it goes where the next Route or the Request-URI says.

Our branch is ``z9hG4bKsz`` + a hash of the fields a loop keeps (Request-URI, From tag,
Call-ID, CSeq number, Route: RFC 3261 §16.6 step 8) + an HMAC, keyed with the installation's
secret (store setting ``sip_branch_secret``), over what a response's way back depends on: the
Via below ours as we forwarded it, the connection it came in on, our Via's transport.  Both
parts are functions of the request, so retransmissions, the CANCEL and the ACK of a non-2xx
answer get the INVITE's branch on any worker or node (§16.11).  A response is relayed only
when the HMAC checks out (current or previous secret): whoever forges one cannot choose where
it goes.  A request carrying a Via of ours with its own loop hash has been here: 482.

Who the core is comes from configuration only: upstream URIs that hold an address, and the
names among them as the transport resolved them in the background (:meth:`Edge.set_resolved`).
Nothing a peer sends makes the edge look a name up, and the edge never sends to itself.

Nothing here touches a socket: :meth:`Edge.receive` returns :class:`Send` values and
``transport.py`` carries them out.  What is worth remembering per snapshot (the admission
verdict per host as written, the OPTIONS answer tail per name) is memoised and dropped when
the snapshot changes, which keeps keep-alives cheap.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

from sipzone.eventlog import EventLog
from sipzone.model.names import lookup_key
from sipzone.model.snapshot import Site, Snapshot
from sipzone.model.tenancy import TenantView
from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS, SipConfig
from sipzone.sip.message import (
    KNOWN,
    LIST_COMMA,
    MAX_CSEQ,
    MAX_FORWARDS,
    PLAIN_GROUPS,
    MalformedMessage,
    Request,
    Response,
    Via,
    check_contacts,
    check_request,
    check_response,
    check_uri,
    header_key,
    is_address,
    is_call_id,
    is_token,
    match_via,
    parse_address,
    parse_message,
    parse_params,
    parse_uri,
    parse_via,
    plain_options_pattern,
    split_addresses,
    split_vias,
    uri_host,
)

log = logging.getLogger("sipzone.sip")

MAGIC_COOKIE = b"z9hG4bK"  # RFC 3261 §8.1.1.7
OUR_BRANCH = MAGIC_COOKIE + b"sz"  # every branch we generate starts so
LOOP_HASH = 10  # hex digits after OUR_BRANCH: what a looping request keeps (§16.3 step 4)
BRANCH_MAC = 20  # hex digits after those: the HMAC that vouches for the way back (80 bits)
BRANCH_LEN = len(OUR_BRANCH) + LOOP_HASH + BRANCH_MAC
CONN_PARAM = b"sz-c"  # in our Via: the stream connection the request came in on
DEFAULT_MAX_FORWARDS = 70
ADMISSION_CACHE = 65536  # distinct hosts remembered per snapshot before the memo is reset
# Initial requests of these methods get no Record-Route: it means nothing for them (§10.2).
NO_RECORD_ROUTE = frozenset({"REGISTER", "ACK", "CANCEL", "OPTIONS"})
METHOD_LABELS = frozenset(
    {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
     "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "PUBLISH"}
)  # fmt: skip
# What a keep-alive may carry and still take the hot path; anything else is decided in full.
KEEPALIVE_HEADERS = KNOWN - {
    b"Require", b"Proxy-Require", b"Date", b"Expires", b"Route", b"Record-Route"
}  # fmt: skip
# RFC 3261 §8.2.6.2: a response we originate copies Via, From, Call-ID, CSeq and To (+ tag).
RESPONSE_HEAD = b"SIP/2.0 %d %s\r\nVia: %s\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s\r\n%s"


def _keepalive_template(status: int, reason: bytes, tail: bytes) -> bytes:
    """A whole answer to a keep-alive but for what differs per ping, left as ``%`` fields:
    Via, From, To, the To tag we add (a CRC of the answer's Via), Call-ID and CSeq."""
    return (
        b"SIP/2.0 %d %s\r\nVia: %%s\r\nFrom: %%s\r\nTo: %%s;tag=sz%%08x\r\nCall-ID: %%s\r\n"
        b"CSeq: %%s\r\n" % (status, reason) + tail.replace(b"%", b"%%")
    )


# Memo value: this keep-alive's target is not admitted.
NOT_SERVED = _keepalive_template(403, b"Domain Not Served", b"Content-Length: 0\r\n\r\n")
KEEPALIVE_SHAPES = 8  # orders of header lines remembered (a platform's kinds of peers)
_STRIP_VIA_ADDR = re.compile(rb";[ \t]*(?:rport|received)(?:[ \t]*=[ \t]*[^;,\s]*)?", re.I)
_TAG_PARAM = re.compile(rb";[ \t]*tag[ \t]*=", re.I)
_TENANT_SAFE = re.compile(rb"[^\x20-\x7e]")
_SWS = re.compile(rb"[ \t]+")


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket of ours: the transport and the host:port written in our Via and Contact."""

    transport: str  # "udp" or "tcp"
    host: str  # advertised host (an address; IPv6 without brackets)
    port: int

    @property
    def sent_by(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode()


class Send(NamedTuple):  # a tuple: built for every answer, so it must be cheap to build
    """Send ``data`` over ``transport`` to host:port; for streams prefer connection ``conn``."""

    data: bytes
    transport: str
    host: str
    port: int
    conn: int | None = None


class Target(NamedTuple):
    """Where an upstream URI sends requests."""

    transport: str
    host: str
    port: int


class Admission(NamedTuple):
    name: str  # the matched FQDN, A-label, lower case
    tenant: TenantView


@dataclass(slots=True)
class Stats:
    """Counts kept as plain integers on the hot path; ``metrics.py`` publishes them."""

    requests: Counter[tuple[str, str]]  # (method label, verdict)
    keepalives: int = 0  # OPTIONS answered 200 on the hot path
    forwarded: int = 0
    relayed: int = 0
    malformed: int = 0

    @classmethod
    def new(cls) -> Stats:
        return cls(Counter())


class Edge:
    """The policy for one worker: feed it messages, carry out the :class:`Send` it returns."""

    def __init__(self, config: SipConfig, listeners: list[Listener]) -> None:
        self.config = config
        self.listeners = listeners
        self.stats = Stats.new()
        self._by_transport = {lst.transport: lst for lst in reversed(listeners)}
        self._ours = {(lst.host, lst.port) for lst in listeners}
        self._our_ports = {lst.port for lst in listeners}
        self._tenant_key = header_key(config.tenant_header.encode())
        self._tenant_name = config.tenant_header.encode()
        self._snapshot: Snapshot | None = None
        self._admissions: dict[bytes, Admission | None] = {}
        self._options_tails: dict[tuple[str, str, int], bytes] = {}
        self._keepalives: dict[tuple[bytes, bytes, int], bytes] = {}
        # (pattern, group numbers of PLAIN_GROUPS, header names) per order of header lines
        self._shapes: list[tuple[re.Pattern[bytes], tuple[int, ...], tuple[bytes, ...]]] = []
        self._good_addresses: set[bytes] = set()
        self._good_vias: dict[bytes, tuple[str, int, bool]] = {}
        self._targets: dict[str, Target | None] = {}
        self._upstream_addrs: set[tuple[str, int]] = set()
        self._resolved: dict[str, str] = {}  # configured upstream name -> its address
        self._site: Site | None = None
        # Branch keys: the store's current secret first, then the previous one.  Without one
        # in the store (tests, a store `sipzone init` never saw) a key of this process only.
        self._keys: tuple[bytes, ...] = ()
        self._own_key = secrets.token_bytes(32)
        self.events = EventLog(log)

    # -- entry points -------------------------------------------------------------------------

    def receive(
        self,
        data: bytes,
        listener: Listener,
        addr: tuple[str, int],
        snapshot: Snapshot,
        conn: int | None = None,
    ) -> list[Send]:
        """One datagram in, what to send out."""
        if not data.strip(b"\r\n"):
            return []  # a CRLF keep-alive (RFC 5626 §3.5.1 style): nothing to answer
        try:
            message = parse_message(data)
        except MalformedMessage as exc:
            return self.malformed(exc, listener, addr, conn)
        return self.handle(message, listener, addr, snapshot, conn)

    def keepalive(
        self, data: bytes, listener: Listener, addr: tuple[str, int], snapshot: Snapshot
    ) -> list[Send] | None:
        """:meth:`answer_keepalive` as the list of :class:`Send` that :meth:`receive` returns."""
        answer = self.answer_keepalive(data, listener, addr, snapshot)
        if answer is None:
            return None
        if isinstance(answer, bytes):
            return [Send(answer, "udp", addr[0], addr[1])] if answer else []
        return [answer]

    def answer_keepalive(
        self, data: bytes, listener: Listener, addr: tuple[str, int], snapshot: Snapshot
    ) -> bytes | Send | None:
        """Answer an OPTIONS keep-alive datagram without the general parser, or return None.

        This is the hot path (a platform's peers ping every few seconds).  It accepts only the
        plainest shape: one UDP Via, canonical header names once each, no body,
        nothing that asks for an extension; and it leans on what was checked once and
        remembered, since a peer's Request-URI and To repeat from one ping to the next, and so
        does the order of its header lines: once a peer's order was seen, one compiled pattern
        for it (:func:`plain_options_pattern`) splits and checks a whole ping in one call.
        Whatever it accepts, :meth:`receive` would answer with the same bytes; whatever it
        declines, :meth:`receive` handles.

        Returns the answer when it goes back to the source address and port (b"" when nothing
        is sent: a scanner's ping dropped), a :class:`Send` when it goes to another port.
        """
        if snapshot is not self._snapshot:
            return None
        if addr in self._ours:
            self.stats.requests[("OPTIONS", "loop")] += 1
            return b""  # a datagram from our own socket (spoofed): never answer ourselves
        shapes = self._shapes
        parsed: tuple[bytes, ...] | None
        for shape in shapes:
            m = shape[0].match(data)
            if m is not None:
                if shape is not shapes[0]:  # most recently used first
                    shapes.remove(shape)
                    shapes.insert(0, shape)
                parsed = m.group(*shape[1])
                break
        else:
            parsed = self._split_keepalive(data)
            if parsed is None:
                return None
        uri, to, via, before, from_, address, call_id, cseq, number = parsed
        if len(number) == 10 and int(number) > MAX_CSEQ:
            return None
        memo_key = (uri, to, listener.port)
        template = self._keepalives.get(memo_key)
        if template is None:
            template = self._learn_keepalive(uri, to, listener, snapshot)
            self._keepalives[memo_key] = template
        if not template:
            return None
        if address not in self._good_addresses:
            if not is_address(address):
                return None
            if len(self._good_addresses) >= ADMISSION_CACHE:
                self._good_addresses.clear()
            self._good_addresses.add(address)
        # A peer's Via differs from ping to ping only in its branch: check the rest once.
        sent_by = self._good_vias.get(before)
        if sent_by is None:
            sent_by = self._learn_via(before)
            if sent_by is None:
                return None
        if template is NOT_SERVED:
            if self.config.drop_unknown:
                self.stats.requests[("OPTIONS", "dropped")] += 1
                return b""
            self.stats.requests[("OPTIONS", "rejected")] += 1
        else:
            self.stats.keepalives += 1
        host, port, rport = sent_by
        if rport or host != addr[0]:
            via = _stamp_via(via, parse_via(via), addr)
        data = template % (via, from_, to, zlib.crc32(via), call_id, cseq)
        if rport or port == addr[1]:
            return data
        return Send(data, "udp", addr[0], port)

    def _split_keepalive(self, data: bytes) -> tuple[bytes, ...] | None:
        """What a plain-options pattern would find in ``data`` (see :data:`PLAIN_GROUPS`),
        found line by line; learns the pattern for this order of header lines."""
        head, sep, body = data.partition(b"\r\n\r\n")
        if body or not sep:
            return None
        first, _, block = head.partition(b"\r\n")
        parts = first.split(b" ")
        if len(parts) != 3 or parts[0] != b"OPTIONS" or parts[2] != b"SIP/2.0":
            return None
        lines = block.split(b"\r\n")
        n = len(lines)
        try:
            # map() over C methods: no Python frame per header line.
            fields = dict(map(bytes.split, lines, repeat(b": ", n), repeat(1, n)))
        except ValueError:
            return None
        if len(fields) != n or not fields.keys() <= KEEPALIVE_HEADERS:
            return None
        get = fields.get
        via = get(b"Via")
        from_ = get(b"From")
        to = get(b"To")
        call_id = get(b"Call-ID")
        cseq = get(b"CSeq")
        mf = get(b"Max-Forwards")
        if via is None or from_ is None or to is None or call_id is None or cseq is None:
            return None
        if mf is None:
            return None
        names = tuple(fields)
        if all(shape[2] != names for shape in self._shapes):
            if len(self._shapes) >= KEEPALIVE_SHAPES:
                self._shapes.pop()  # the least recently used
            pattern = plain_options_pattern(names)
            groups = tuple(pattern.groupindex[name] for name in PLAIN_GROUPS)
            self._shapes.append((pattern, groups, names))
        if not mf.isdigit() or len(mf) > 3 or not 0 < int(mf) <= MAX_FORWARDS:
            return None
        number = cseq[:-8]
        if not cseq.endswith(b" OPTIONS") or not number.isdigit() or len(number) > 10:
            return None
        length = get(b"Content-Length")
        if length is not None and length != b"0":
            return None
        address, tagged, tag = from_.rpartition(b";tag=")
        if not tagged or not is_token(tag):
            return None
        if not is_call_id(call_id):
            return None
        before, has_branch, branch = via.partition(b";branch=")
        if not has_branch or not is_token(branch):
            return None
        return (parts[1], to, via, before, from_, address, call_id, cseq, number)

    def _learn_via(self, before_branch: bytes) -> tuple[str, int, bool] | None:
        """(sent-by host, port, has a bare rport) for a plain UDP Via, else None."""
        sent_by = match_via(before_branch + b";branch=z9hG4bK")
        if sent_by is None or not before_branch.startswith(b"SIP/2.0/UDP "):
            return None
        params = parse_params(sent_by[2])
        if b"received" in params or params.get(b"rport", None) is not None:
            return None
        if len(self._good_vias) >= ADMISSION_CACHE:
            self._good_vias.clear()
        host = sent_by[0].strip(b"[]").decode("ascii")
        port = int(sent_by[1]) if sent_by[1] else 0
        learned = (host, port or 5060, b"rport" in params)  # as the general path: 0 is 5060
        self._good_vias[before_branch] = learned
        return learned

    def _learn_keepalive(
        self, uri: bytes, to: bytes, listener: Listener, snapshot: Snapshot
    ) -> bytes:
        """The answer template for a keep-alive to ``uri`` with this To (200 with the Contact
        of the matched name), NOT_SERVED when its target is not admitted, or b"" when the
        general path must decide (a To tag, a tel: URI, anything not plainly valid)."""
        if len(self._keepalives) >= ADMISSION_CACHE:
            self._keepalives.clear()
        try:
            check_uri(uri)
            address = parse_address(to, "To")
        except MalformedMessage:
            return b""
        host = uri_host(uri)
        if host is None or address.tag is not None:
            return b""
        if to != to.strip(b" \t") or b"tag" in to.lower():
            return b""
        if not host or host[-1] in b"0123456789]":
            host = uri_host(address.uri) or b""  # as in _request: an address names no domain
        admission = (
            self._admissions[host] if host in self._admissions else self._admit(host, snapshot)
        )
        if admission is None:
            return NOT_SERVED
        return _keepalive_template(200, b"OK", self._options_tail(admission.name, listener))

    def handle(
        self,
        message: Request | Response,
        listener: Listener,
        addr: tuple[str, int],
        snapshot: Snapshot,
        conn: int | None = None,
    ) -> list[Send]:
        """One parsed message in (from a datagram or a stream), what to send out."""
        if snapshot is not self._snapshot:
            self._adopt(snapshot)
        if addr in self._ours:  # from our own socket: spoofed, or a loop; never answer it
            if isinstance(message, Response):
                self.stats.requests[("response", "loop")] += 1
            else:
                self._count(message.method, "loop")
            return []
        if isinstance(message, Response):
            return self._relay(message)
        try:
            top = check_request(message)
            if (addr[0], addr[1]) in self._upstream_addrs:
                sends = self._downstream(message, top, listener, addr, conn)
            else:
                sends = self._request(message, top, listener, addr, snapshot, conn)
        except MalformedMessage as exc:
            if exc.message is None:
                exc.message = message  # field parsers do not know the message they parse
            return self.malformed(exc, listener, addr, conn)
        return self._not_to_us(sends)

    def malformed(
        self, exc: MalformedMessage, listener: Listener, addr: tuple[str, int], conn: int | None
    ) -> list[Send]:
        """Answer a message we could not accept with the status its problem calls for, when a
        reply is possible at all (a request, not ACK, with a Via to answer); else drop it."""
        self.stats.malformed += 1
        request = exc.message
        if not isinstance(request, Request) or request.method == "ACK":
            self.stats.requests[("other", "dropped_malformed")] += 1
            return []
        if not request.fields.get(b"Via"):
            self._count(request.method, "dropped_malformed")
            return []
        self._count(request.method, "malformed")
        try:
            top: Via | None = parse_via(request.fields[b"Via"])
        except MalformedMessage:
            top = None  # answer to the source; echo the Via as it came
        reason = _reason(str(exc))
        reply = self._reply(request, top, listener, addr, conn, exc.status, reason)
        return self._not_to_us([reply])

    def _not_to_us(self, sends: list[Send]) -> list[Send]:
        """``sends`` without what would go to one of our own listeners (a Via naming us)."""
        for send in sends:
            if (send.host, send.port) in self._ours:
                self.stats.requests[("other", "loop")] += 1
                return [s for s in sends if (s.host, s.port) not in self._ours]
        return sends

    # -- requests towards the core ------------------------------------------------------------

    def _request(
        self,
        request: Request,
        top: Via,
        listener: Listener,
        addr: tuple[str, int],
        snapshot: Snapshot,
        conn: int | None,
    ) -> list[Send]:
        method = request.method
        host = uri_host(request.uri)
        if host is None:
            check_uri(request.uri)  # raises for what is not a sip, sips or tel URI
            host = b""  # a tel URI names no host: the To host decides
        if not host or host[-1] in b"0123456789]":
            # An IP literal (no top-level domain ends in a digit) names no domain: fall back
            # to the To host, which a phone dialling the edge's address still fills in.
            to_uri = parse_address(request.fields[b"To"], "To").uri
            host = uri_host(to_uri) or b""
        admissions = self._admissions
        admission = admissions[host] if host in admissions else self._admit(host, snapshot)
        if admission is None:
            if method == "ACK" or self.config.drop_unknown:
                self._count(method, "dropped")
                return []
            self._count(method, "rejected")
            return [self._reply(request, top, listener, addr, conn, 403, b"Domain Not Served")]

        fields = request.fields
        proxy_require = fields.get(b"Proxy-Require")
        if proxy_require and method != "ACK":
            # We implement no proxy extensions (RFC 3261 §16.3 step 5, RFC 4475 §3.3.5).
            self._count(method, "unsupported")
            return [self._unsupported(request, top, listener, addr, conn, proxy_require)]
        mf = fields.get(b"Max-Forwards")
        max_forwards = int(mf) if mf is not None else DEFAULT_MAX_FORWARDS  # checked already
        if max_forwards == 0:
            if method == "ACK":
                self._count(method, "dropped")
                return []
            self._count(method, "too_many_hops")
            return [self._reply(request, top, listener, addr, conn, 483, b"Too Many Hops")]

        if method == "OPTIONS" and not _has_tag(fields[b"To"]):
            require = fields.get(b"Require")
            if require:
                self._count(method, "unsupported")
                return [self._unsupported(request, top, listener, addr, conn, require)]
            self._count(method, "answered")
            tail = self._options_tail(admission.name, listener)
            return [self._reply(request, top, listener, addr, conn, 200, b"OK", tail)]

        check_contacts(request)
        upstream = admission.tenant.upstream or (self._site.upstream if self._site else None)
        target = self._address_of(self._target(upstream)) if upstream else None
        if target is None:
            reason = self._no_upstream(admission.tenant.name, upstream)
            if method == "ACK":
                self._count(method, "dropped")
                return []
            self._count(method, "no_upstream")
            return [self._reply(request, top, listener, addr, conn, 503, reason)]
        return self._forward(request, top, listener, addr, conn, target, max_forwards, admission)

    def _downstream(
        self,
        request: Request,
        top: Via,
        listener: Listener,
        addr: tuple[str, int],
        conn: int | None,
    ) -> list[Send]:
        """A request from the core to a client (in-dialog): route by Route / Request-URI."""
        routes = self._routes_after_ours(request)
        hop = parse_uri(parse_address(routes[0], "Route").uri if routes else request.uri)
        if not hop.host:
            raise MalformedMessage(f"no host to send {request.method} to", request)
        mf = request.fields.get(b"Max-Forwards")
        max_forwards = int(mf) if mf is not None else DEFAULT_MAX_FORWARDS
        if max_forwards == 0:
            self._count(request.method, "too_many_hops")
            return [self._reply(request, top, listener, addr, conn, 483, b"Too Many Hops")]
        host = hop.host.strip(b"[]").decode("utf-8", "replace")
        # Only an address, or a name of our configured upstreams: never a lookup for a peer.
        target = self._address_of(Target(hop.transport, host, hop.port or 5060))
        if target is None:
            self.events.warning(
                "next-hop-name",
                "in-dialog %s from %s:%d: next hop %s is a name we do not resolve; answering 502",
                request.method, addr[0], addr[1], host[:100],
            )  # fmt: skip
            if request.method == "ACK":
                self._count(request.method, "dropped")
                return []
            self._count(request.method, "unresolvable")
            reason = b"Next Hop Is Not An Address"
            return [self._reply(request, top, listener, addr, conn, 502, reason)]
        return self._forward(request, top, listener, addr, conn, target, max_forwards, None)

    def _forward(
        self,
        request: Request,
        top: Via,
        listener: Listener,
        addr: tuple[str, int],
        conn: int | None,
        target: Target,
        max_forwards: int,
        admission: Admission | None,
    ) -> list[Send]:
        """Send the request on to ``target`` and count it, unless it loops (482)."""
        loop = _loop_hash(request)
        if (target.host, target.port) in self._ours or self._has_looped(request, loop):
            if request.method == "ACK":
                self._count(request.method, "dropped")
                return []
            self._count(request.method, "loop")
            return [self._reply(request, top, listener, addr, conn, 482, b"Loop Detected")]
        self._count(request.method, "forwarded")
        self.stats.forwarded += 1
        data = self._forwarded(request, top, addr, conn, target, max_forwards, admission, loop)
        return [Send(data, target.transport, target.host, target.port)]

    def _has_looped(self, request: Request, loop: bytes) -> bool:
        """Whether a Via of ours carries this request's loop hash: it was here before and
        comes back unchanged (RFC 3261 §16.3 step 4; a changed one is a spiral)."""
        vias = request.fields[b"Via"]
        marker = OUR_BRANCH + loop
        if marker not in vias:
            return False  # the common case costs one substring search
        return any(
            (via.branch or b"").startswith(marker) and self._is_our_sent_by(via)
            for via in split_vias(vias)  # at most MAX_VIAS: check_request counted them
        )

    def _forwarded(
        self,
        request: Request,
        top: Via,
        addr: tuple[str, int],
        conn: int | None,
        target: Target,
        max_forwards: int,
        admission: Admission | None,
        loop: bytes,
    ) -> bytes:
        """The request as a stateless proxy sends it on (RFC 3261 §16.6, §16.11)."""
        out = self._by_transport.get(target.transport) or self.listeners[0]
        transport = target.transport.upper().encode()
        # The Via below ours exactly as it leaves (stamped), which the HMAC vouches for.
        below = parse_via(_stamp_via(request.fields[b"Via"][: top.end], top, addr))
        conn_value = b"%d" % conn if conn is not None else b""
        mac = _branch_mac(self._keys[0], loop, below, conn_value, transport)
        via = b"SIP/2.0/%s %s;branch=%s%s%s" % (transport, out.sent_by, OUR_BRANCH, loop, mac)
        if conn is not None:
            via += b";%s=%s" % (CONN_PARAM, conn_value)
        lines = [b"Via: " + via + b"\r\n"]
        to_tagged = _has_tag(request.fields[b"To"])
        if admission is not None and not to_tagged and request.method not in NO_RECORD_ROUTE:
            lines.append(b"Record-Route: <sip:%s;lr>\r\n" % admission.name.encode())
        routes = self._routes_after_ours(request)
        seen_via = seen_route = False
        for key, name, value in request.headers():
            if key == b"Via" and not seen_via:
                seen_via = True
                value = _stamp_via(value, top, addr)
            elif key == b"Max-Forwards":
                continue
            elif key == b"Route":
                if not seen_route:
                    seen_route = True
                    lines.extend(b"Route: " + r + b"\r\n" for r in routes)
                continue
            elif key == self._tenant_key:
                continue  # only we say whose call it is; never pass a peer's claim on
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"Max-Forwards: %d\r\n" % (max_forwards - 1))
        if admission is not None:
            tenant = _TENANT_SAFE.sub(b"", admission.tenant.header_value)
            lines.append(self._tenant_name + b": " + tenant + b"\r\n")
        if b"Content-Length" not in request.fields:
            lines.append(b"Content-Length: %d\r\n" % len(request.body))
        return request.start_line + b"\r\n" + b"".join(lines) + b"\r\n" + request.body

    def _routes_after_ours(self, request: Request) -> list[bytes]:
        """The Route entries left once ours (the top one, if it names us) is popped (§16.4)."""
        value = request.fields.get(b"Route")
        if not value:
            return []
        routes = split_addresses(value)
        first = parse_address(routes[0], "Route")
        if self._is_us(first.uri):
            del routes[0]
        return routes

    def _is_us(self, uri: bytes) -> bool:
        """Whether a Route URI names this edge: host AND port of one of our listeners (the
        scheme's default port when none is written), or a name we serve with no port or one
        of our listeners' ports."""
        try:
            parsed = parse_uri(uri)
        except MalformedMessage:
            return False
        if parsed.scheme not in ("sip", "sips"):
            return False
        text = parsed.host.strip(b"[]").decode("utf-8", "replace")
        port = parsed.port or (5061 if parsed.scheme == "sips" else 5060)
        if (text, port) in self._ours:
            return True
        if parsed.port is not None and parsed.port not in self._our_ports:
            return False
        snapshot = self._snapshot
        return snapshot is not None and snapshot.matcher.owner(lookup_key(text)) is not None

    # -- responses from the core --------------------------------------------------------------

    def _relay(self, response: Response) -> list[Send]:
        """Pop our Via and send the response where the next Via says (RFC 3261 §16.7, §18.2.2),
        if our branch vouches for that Via; anything else is dropped and counted."""
        try:
            check_response(response)
            vias = response.fields[b"Via"]
            top = parse_via(vias)
            branch = top.branch or b""
            if not branch.startswith(OUR_BRANCH) or not self._is_our_sent_by(top):
                self.stats.requests[("response", "stray")] += 1
                return []
            if top.end >= len(vias):
                self.stats.requests[("response", "forged")] += 1
                return []
            nxt = parse_via(vias, LIST_COMMA.match(vias, top.end).end())  # type: ignore[union-attr]
        except MalformedMessage:
            self.stats.malformed += 1
            return []
        if not self._vouches(top, nxt):
            self.stats.requests[("response", "forged")] += 1
            return []
        host, port = _via_destination(nxt)
        if not _is_ip(host):
            # Our stamp makes every Via we vouch for name an address (received); never resolve.
            self.stats.requests[("response", "unroutable")] += 1
            return []
        if (host, port) in self._ours:
            self.stats.requests[("response", "loop")] += 1
            return []
        lines = []
        popped = False
        for key, name, value in response.headers():
            if key == b"Via" and not popped:
                popped = True
                first = parse_via(value)
                if first.end >= len(value):
                    continue  # our Via had the line to itself
                value = value[LIST_COMMA.match(value, first.end).end() :]  # type: ignore[union-attr]
            lines.append(name + b": " + value + b"\r\n")
        data = response.start_line + b"\r\n" + b"".join(lines) + b"\r\n" + response.body
        conn_param = top.params.get(CONN_PARAM)
        conn = int(conn_param) if conn_param and conn_param.isdigit() else None
        self.stats.relayed += 1
        return [Send(data, nxt.transport, host, port, conn)]

    def _vouches(self, top: Via, below: Via) -> bool:
        """Whether the branch of our Via ``top`` is what we computed for ``below``, under the
        current secret or the previous one."""
        branch = top.branch or b""
        if len(branch) != BRANCH_LEN:
            return False
        loop = branch[len(OUR_BRANCH) : len(OUR_BRANCH) + LOOP_HASH]
        mac = branch[len(OUR_BRANCH) + LOOP_HASH :]
        conn = top.params.get(CONN_PARAM) or b""
        transport = top.transport_name.upper()
        return any(
            hmac.compare_digest(mac, _branch_mac(key, loop, below, conn, transport))
            for key in self._keys
        )

    def _is_our_sent_by(self, via: Via) -> bool:
        host = via.host.strip(b"[]").decode("ascii", "replace")
        return (host, via.port or 5060) in self._ours

    # -- responses we originate (RFC 3261 §8.2.6) ---------------------------------------------

    def _reply(
        self,
        request: Request,
        top: Via | None,
        listener: Listener,
        addr: tuple[str, int],
        conn: int | None,
        status: int,
        reason: bytes,
        tail: bytes = b"Content-Length: 0\r\n\r\n",
    ) -> Send:
        fields = request.fields
        via = fields[b"Via"]
        if top is not None:
            via = _stamp_via(via, top, addr)
        to = fields.get(b"To", b"")
        if status != 100 and to and not _has_tag(to):
            to += b";tag=sz%08x" % zlib.crc32(via)
        data = RESPONSE_HEAD % (
            status,
            reason,
            via,
            fields.get(b"From", b""),
            to,
            fields.get(b"Call-ID", b""),
            fields.get(b"CSeq", b""),
            tail,
        )
        if listener.transport != "udp":
            return Send(data, listener.transport, addr[0], addr[1], conn)
        if top is None or top.rport is not None:
            return Send(data, "udp", addr[0], addr[1])
        # RFC 3261 §18.2.2: to the source address, at the port the Via names.
        return Send(data, "udp", addr[0], top.port or 5060)

    def _unsupported(
        self,
        request: Request,
        top: Via,
        listener: Listener,
        addr: tuple[str, int],
        conn: int | None,
        tags: bytes,
    ) -> Send:
        tail = b"Unsupported: %s\r\nContent-Length: 0\r\n\r\n" % tags
        return self._reply(request, top, listener, addr, conn, 420, b"Bad Extension", tail)

    def _options_tail(self, name: str, listener: Listener) -> bytes:
        key = (name, listener.transport, listener.port)
        tail = self._options_tails.get(key)
        if tail is None:
            cfg = self.config
            tail = (
                f"Allow: {', '.join(cfg.allow)}\r\n"
                "Accept: application/sdp\r\n"
                f"Supported: {', '.join(cfg.supported)}\r\n"
                f"Contact: <sip:{name}:{listener.port};transport={listener.transport}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            if len(self._options_tails) >= ADMISSION_CACHE:
                self._options_tails.clear()
            self._options_tails[key] = tail
        return tail

    # -- per-snapshot memo --------------------------------------------------------------------

    def _adopt(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._admissions = {}
        self._options_tails = {}
        self._keepalives = {}
        self._site = self._site_of(snapshot)
        self._upstream_addrs = self._core_addresses(snapshot)
        settings = snapshot.settings
        keys = tuple(
            settings[name].encode()
            for name in (BRANCH_SECRET, BRANCH_SECRET_PREVIOUS)
            if settings.get(name)
        )
        if not keys:
            self.events.warning(
                "no-branch-secret",
                "the store holds no %s (run `sipzone init`): branches are signed with a key of "
                "this process only, so other workers and nodes cannot relay their responses",
                BRANCH_SECRET,
            )
            keys = (self._own_key,)
        self._keys = keys

    def _site_of(self, snapshot: Snapshot) -> Site | None:
        """The site this edge runs at: the configured one, else the first."""
        if not snapshot.sites:
            return None
        wanted = self.config.site
        site = next((s for s in snapshot.sites if s.name == wanted), None)
        if site is None and wanted is None:
            site = snapshot.sites[0]
        return site

    def _upstream_uris(self, snapshot: Snapshot) -> set[str]:
        """The upstreams configured in ``snapshot``: every tenant's and this site's."""
        upstreams = {t.upstream for t in snapshot.tenants.views.values() if t.upstream}
        site = self._site_of(snapshot)
        if site is not None and site.upstream:
            upstreams.add(site.upstream)
        return upstreams

    def _core_addresses(self, snapshot: Snapshot) -> set[tuple[str, int]]:
        """(address, port) of every configured upstream: requests from there come from the core."""
        addresses = set()
        for text in self._upstream_uris(snapshot):
            target = self._address_of(self._target(text))
            if target is not None:
                addresses.add((target.host, target.port))
        return addresses

    def upstream_names(self, snapshot: Snapshot) -> set[str]:
        """The host names (not addresses) among the upstreams configured in ``snapshot``: the
        transport resolves these, and nothing else, in the background."""
        names = set()
        for text in self._upstream_uris(snapshot):
            target = self._target(text)
            if target is not None and not _is_ip(target.host):
                names.add(target.host)
        return names

    def set_resolved(self, addresses: Mapping[str, str]) -> None:
        """The transport resolved the configured upstream names: name -> address."""
        self._resolved = dict(addresses)
        if self._snapshot is not None:
            self._upstream_addrs = self._core_addresses(self._snapshot)

    def _address_of(self, target: Target | None) -> Target | None:
        """``target`` with its host as an address: as written, or as resolved for a configured
        upstream name; None for any other name."""
        if target is None or _is_ip(target.host):
            return target
        address = self._resolved.get(target.host)
        return target._replace(host=address) if address is not None else None

    def _admit(self, host: bytes, snapshot: Snapshot) -> Admission | None:
        try:
            key = lookup_key(host.decode("utf-8"))
        except UnicodeDecodeError:
            key = ""
        tenant = snapshot.matcher.owner(key) if key else None
        admission = Admission(key, tenant) if tenant is not None else None
        if len(self._admissions) >= ADMISSION_CACHE:
            self._admissions.clear()
        self._admissions[host] = admission
        return admission

    def _target(self, upstream: str) -> Target | None:
        if upstream in self._targets:
            return self._targets[upstream]
        target = None
        try:
            uri = parse_uri(upstream.encode())
            if uri.scheme in ("sip", "sips") and uri.host:
                transport = "tcp" if uri.scheme == "sips" else uri.transport
                if transport in ("udp", "tcp"):
                    host = uri.host.strip(b"[]").decode("ascii")
                    target = Target(transport, host, uri.port or 5060)
        except (MalformedMessage, UnicodeDecodeError):
            target = None
        self._targets[upstream] = target
        return target

    def _no_upstream(self, tenant: str, upstream: str | None) -> bytes:
        """Log (rate-limited) why ``tenant``'s requests cannot go on; the 503 reason phrase."""
        if not upstream:
            self.events.warning(
                f"no-upstream:{tenant}",
                "tenant %s has no upstream and site %s has none: answering 503",
                tenant,
                self._site.name if self._site else "(none)",
            )
            return b"No Upstream Configured"
        if self._target(upstream) is None:
            self.events.warning(
                f"bad-upstream:{tenant}",
                "tenant %s: upstream %r is not a usable sip: URI (udp/tcp)",
                tenant,
                upstream,
            )
            return b"No Upstream Configured"
        self.events.warning(
            f"unresolved-upstream:{tenant}",
            "tenant %s: upstream %r does not resolve (yet): answering 503",
            tenant,
            upstream,
        )
        return b"Upstream Not Resolved"

    def _count(self, method: str, verdict: str) -> None:
        self.stats.requests[(method if method in METHOD_LABELS else "other", verdict)] += 1


# -- helpers ----------------------------------------------------------------------------------


def _has_tag(address: bytes) -> bool:
    if b"tag" not in address.lower():
        return False
    try:
        return parse_address(address).tag is not None
    except MalformedMessage:
        # A 400 may be about this very To; keep whatever tag-looking parameter it has.
        return _TAG_PARAM.search(address) is not None


def _stamp_via(value: bytes, top: Via, addr: tuple[str, int]) -> bytes:
    """The top Via with ``received`` (RFC 3261 §18.2.1) and ``rport`` (RFC 3581) filled in."""
    source = addr[0]
    host = top.host.strip(b"[]").decode("ascii", "replace")
    if top.rport is None:
        if host == source:
            return value
        first = _STRIP_VIA_ADDR.sub(b"", value[: top.end].rstrip(b" \t"))
        return first + b";received=" + source.encode() + value[top.end :]
    first = _STRIP_VIA_ADDR.sub(b"", value[: top.end].rstrip(b" \t"))
    return first + b";received=%s;rport=%d" % (source.encode(), addr[1]) + value[top.end :]


def _via_destination(via: Via) -> tuple[str, int]:
    """Where a response goes for this Via (RFC 3261 §18.2.2, RFC 3581 §4)."""
    host = (via.received or via.host).strip(b"[]").decode("ascii", "replace")
    rport = via.rport
    if rport:
        return host, int(rport)
    return host, via.port or 5060


def _loop_hash(request: Request) -> bytes:
    """The part of our branch a request keeps if it comes back to us unchanged (RFC 3261 §16.6
    step 8): Request-URI, From tag, Call-ID, CSeq number and Route.  No To tag and no method,
    so the INVITE, its CANCEL and the ACK of a non-2xx answer share it (§16.11)."""
    fields = request.fields
    from_tag = parse_address(fields[b"From"], "From").tag or b""
    cseq = fields[b"CSeq"].split(None, 1)[0]
    route = fields.get(b"Route", b"")
    basis = b"\n".join((request.uri, from_tag, fields[b"Call-ID"], cseq, route))
    return hashlib.blake2b(basis, digest_size=LOOP_HASH // 2).hexdigest().encode()


def _branch_mac(key: bytes, loop: bytes, below: Via, conn: bytes, transport: bytes) -> bytes:
    """The HMAC in our branch, over what a response's way back depends on: the Via below ours
    as we forwarded it (received/rport stamped; spacing aside, which a UAS may redo), the
    connection the request came in on, the transport of our Via, and the loop hash."""
    port = b"%d" % below.port if below.port is not None else b""
    canonical = b"%s %s:%s%s" % (
        below.transport_name.upper(),
        below.host.lower(),
        port,
        _SWS.sub(b"", below.raw_params),
    )
    message = b"\n".join((loop, canonical, conn, transport.upper()))
    return hmac.digest(key, message, "sha256")[: BRANCH_MAC // 2].hex().encode()


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    """Whether ``host`` (IPv6 without brackets) is an address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _reason(text: str) -> bytes:
    """An error message made safe for a Reason-Phrase (no CR/LF, bounded)."""
    data = text.encode("ascii", "backslashreplace").replace(b"\r", b" ").replace(b"\n", b" ")
    return data[:160]
