"""The OPTIONS keep-alive fast path: answer a platform's pings without the general parser.

A platform's peers (SBCs, Teams, monitoring) ping every few seconds, and a peer's pings repeat
almost everything from one to the next: the Request-URI and To, the order of the header lines,
the Via up to its branch, the From address.  :class:`KeepAlives` checks each of those once and
remembers it; after that a ping costs one compiled pattern for its order of header lines
(:func:`~sipzone.sip.message.plain_options_pattern`) and a ``%`` into a template.

It takes datagrams and a stream's framed messages alike, in the plainest shape only: one Via,
canonical header names once each, no body, nothing that asks for an extension.  Whatever it
answers, the general path would answer with the same bytes (the tests hold it to that, over
a mutation fuzz); whatever it does not take it declines with :data:`DECLINED`, and the
general path decides.
"""

from __future__ import annotations

import enum
import re
import zlib
from itertools import repeat
from typing import Final, NamedTuple

from sipzone.sip import SipConfig
from sipzone.sip.memo import SnapshotMemo, requested_host
from sipzone.sip.message import (
    EMPTY_TAIL,
    KNOWN,
    MAX_CSEQ,
    MAX_FORWARDS,
    PLAIN_GROUPS,
    RESPONSE_HEAD,
    TO_TAG,
    MalformedMessage,
    check_uri,
    default_port,
    is_address,
    is_call_id,
    is_token,
    match_via,
    parse_address,
    parse_params,
    parse_via,
    plain_options_pattern,
    stamp_via,
    uri_host,
)
from sipzone.sip.values import NOTHING, Arrival, Listener, Send, Sends, Stats, new_tuple

# What a keep-alive may carry and still take the fast path; anything else is decided in full.
KEEPALIVE_HEADERS = KNOWN - {
    b"Require", b"Proxy-Require", b"Date", b"Expires", b"Route", b"Record-Route"
}  # fmt: skip
KEEPALIVE_SHAPES = 8  # orders of header lines remembered (a platform's kinds of peers)
LEARNT_CAP = 65536  # peers and templates a memo keeps before starting over (peers choose keys)


class Declined(enum.Enum):
    """The fast path's answer when the general path must decide."""

    DECLINED = "declined"


DECLINED: Final = Declined.DECLINED


class Template(NamedTuple):
    """A whole answer to a keep-alive but for what differs per ping, left as ``%`` fields: Via,
    From, To, our To tag (a CRC of the answer's Via), Call-ID and CSeq."""

    text: bytes
    admitted: bool  # False: the 403 for a name not served (dropped under drop_unknown)


Learnt = Template | Declined  # what the memo keeps per (Request-URI, To, our listener)


def template(status: int, reason: bytes, tail: bytes) -> Template:
    """The answer template for ``status`` with ``tail`` after CSeq (as the general path)."""
    head = RESPONSE_HEAD % (status, reason, b"%s", b"%s", b"%s" + TO_TAG, b"%s", b"%s", b"")
    return Template(head + tail.replace(b"%", b"%%"), status < 300)


NOT_SERVED = template(403, b"Domain Not Served", EMPTY_TAIL)


# One order of header lines: its pattern, the group numbers of PLAIN_GROUPS in it, and the
# header names in that order.  A plain tuple read by index: it is read for every ping.
Shape = tuple[re.Pattern[bytes], tuple[int, ...], tuple[bytes, ...]]


class Peer(NamedTuple):
    """What the fast path learnt, once, about the pings of one peer (keyed by what repeats in
    them: Request-URI, To, Via up to its branch, From up to its tag, our listener's port): the
    answer template, and the Via's sent-by and whether it asks for rport (RFC 3581)."""

    text: bytes
    admitted: bool
    host: str
    port: int
    rport: bool


PeerKey = tuple[bytes, bytes, bytes, bytes, str, int]


class KeepAlives:
    """The fast path of one edge: learns shapes (kept here, most recently used first: they do
    not depend on the snapshot), peers and answer templates (kept in the snapshot's memo: an
    answer does)."""

    def __init__(self, config: SipConfig, stats: Stats, ours: frozenset[tuple[str, int]]) -> None:
        self._drop_unknown = config.drop_unknown
        self._stats = stats
        self._ours = ours
        self._shapes: list[Shape] = []

    @property
    def shapes(self) -> tuple[Shape, ...]:
        """The orders of header lines learnt, most recently used first."""
        return tuple(self._shapes)

    def forget_shapes(self) -> None:
        """Start learning orders of header lines afresh (the next ping is split line by line)."""
        self._shapes.clear()

    def answer(self, data: bytes, arrival: Arrival, memo: SnapshotMemo) -> Sends | Declined:
        """The answer to an OPTIONS datagram, or DECLINED when the general path must decide."""
        listener, addr, conn = arrival
        if addr in self._ours:
            self._stats.requests[("OPTIONS", "loop")] += 1
            return NOTHING  # a datagram from our own socket (spoofed): never answer ourselves
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
            parsed = self._split(data)
            if parsed is None:
                return DECLINED
        uri, to, via, before, from_, address, call_id, cseq, number = parsed
        if len(number) == 10 and int(number) > MAX_CSEQ:
            return DECLINED
        # A peer's pings differ in branch, tag, Call-ID and CSeq only: the rest is checked once.
        key = (uri, to, before, address, listener.transport, listener.port)
        peer = memo.keepalive_peers.get(key)
        if peer is None:
            peer = self._learn_peer(key, listener, memo)
        if peer is DECLINED:
            return DECLINED
        text, admitted, host, port, rport = peer
        udp = listener.transport == "udp"
        if udp and not rport and port != addr[1] and (addr[0], port) in self._ours:
            return DECLINED  # the Via names one of our sockets: the general path drops it
        if admitted:
            self._stats.keepalives += 1
        elif self._drop_unknown:
            self._stats.requests[("OPTIONS", "dropped")] += 1
            return NOTHING
        else:
            self._stats.requests[("OPTIONS", "rejected")] += 1
        if rport or host != addr[0]:
            via = stamp_via(via, parse_via(via), addr)
        data = text % (via, from_, to, zlib.crc32(via), call_id, cseq)
        if not udp:  # back over the connection it came in on
            return (new_tuple(Send, (data, listener.transport, addr[0], addr[1], conn)),)
        # RFC 3581: with rport back to the source port; else to the Via's port (§18.2.2).
        return (new_tuple(Send, (data, "udp", addr[0], addr[1] if rport else port, None)),)

    def _split(self, data: bytes) -> tuple[bytes, ...] | None:
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

    def _learn_peer(self, key: PeerKey, listener: Listener, memo: SnapshotMemo) -> Peer | Declined:
        """What to answer a peer whose pings repeat ``key``, or DECLINED; remembered in the
        memo.  The From address must be an address and the Via a plain one (no received,
        no rport value)."""
        peers = memo.keepalive_peers
        if len(peers) >= LEARNT_CAP:
            peers.clear()
        uri, to, before_branch, address, _, _ = key
        learnt = self._template(uri, to, listener, memo)
        sent_by = match_via(before_branch + b";branch=z9hG4bK")
        peer: Peer | Declined = DECLINED
        if (
            learnt is not DECLINED
            and is_address(address)
            and sent_by is not None
            and before_branch.startswith(b"SIP/2.0/")
        ):
            params = parse_params(sent_by[2])
            if b"received" not in params and params.get(b"rport", None) is None:
                host = sent_by[0].strip(b"[]").decode("ascii")
                port = int(sent_by[1]) if sent_by[1] else 0
                rport = b"rport" in params
                peer = Peer(*learnt, host, port or default_port("udp"), rport)
        peers[key] = peer
        return peer

    def _template(self, uri: bytes, to: bytes, listener: Listener, memo: SnapshotMemo) -> Learnt:
        """The answer template for a keep-alive to ``uri`` with this To (200 with the Contact
        of the matched name, or NOT_SERVED), or DECLINED when the general path must decide (a
        To tag, a tel: URI, anything not plainly valid); remembered in the memo."""
        templates = memo.keepalive_templates
        template_key = (uri, to, listener.transport, listener.port)
        learnt = templates.get(template_key)
        if learnt is not None:
            return learnt
        if len(templates) >= LEARNT_CAP:
            templates.clear()
        try:
            check_uri(uri)
            address = parse_address(to, "To")
            host = uri_host(uri)
            # A To tag (in-dialog), odd spacing around it, or a tel: URI: the general path.
            plain = to == to.strip(b" \t") and b"tag" not in to.lower()
            if host is None or address.tag is not None or not plain:
                learnt = DECLINED
            else:
                admission = memo.admit(requested_host(host, to))
                if admission is None:
                    learnt = NOT_SERVED
                else:
                    learnt = template(200, b"OK", memo.options_tail(admission.name, listener))
        except MalformedMessage:
            learnt = DECLINED
        templates[template_key] = learnt
        return learnt
