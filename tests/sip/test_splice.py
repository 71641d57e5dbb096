"""The proxied-message fast path (``splice.py``): whatever it sends, the general path sends byte
for byte, and counts the same; what it cannot vouch for it declines.

Two edges with the same secret see the same datagrams: one takes :meth:`Edge.receive`'s way
(the fast path, the general path when it declines), the other the general path alone
(``general_path``: parse, then :meth:`Edge.handle`).  Whole calls in the shapes real peers
send (sipp's scenarios with their comma-joined Vias and Routes and padded Content-Length, a
baresip-like phone behind NAT with rport, a plain UA with one header per line) must take the
fast path once learnt, and a mutation fuzz over them must never make the two disagree.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import pytest

from sipzone.model.snapshot import Snapshot
from sipzone.sip import BRANCH_SECRET, SipConfig
from sipzone.sip.choice import Hop, choose
from sipzone.sip.edge import Edge
from sipzone.sip.keepalive import DECLINED
from sipzone.sip.message import MalformedMessage, Request, StreamReader, parse_message
from sipzone.sip.values import Arrival, Listener, Send, Sends, Target
from tests.sip.conftest import general_path, make_snapshot
from tests.sip.test_keepalive import mutated

UDP = Listener("udp", "127.0.0.1", 5070)
TCP = Listener("tcp", "127.0.0.1", 5070)
CORE = ("127.0.0.1", 5999)  # make_snapshot's upstream, where every request here goes
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\n"
)


@dataclasses.dataclass(frozen=True)
class Peer:
    """How one kind of peer writes its messages."""

    name: str
    source: tuple[str, int]  # where its datagrams come from (a NAT binding for baresip)
    via: str  # its Via up to the branch
    via_tail: str  # after the branch
    from_: str  # From up to the tag
    joined: bool  # Via, Record-Route and Route lists on one line, as sipp writes them
    pad: bool  # "Content-Length:   109", as sipp writes it
    extra: tuple[str, ...] = ()  # other header lines of its requests


SIPP = Peer("sipp", ("127.0.0.1", 5061), "SIP/2.0/UDP 127.0.0.1:5061", "",
            "<sip:caller@voip.example.com>", joined=True, pad=True)  # fmt: skip
BARESIP = Peer(
    "baresip", ("198.51.100.9", 40123), "SIP/2.0/UDP 10.0.0.5:5062;rport", "",
    '"Alice" <sip:alice@voip.example.com>', joined=False, pad=False,
    extra=("Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE",
           "Supported: replaces,norefersub", "User-Agent: baresip v1.0.0 (x86_64/linux)"),
)  # fmt: skip
PLAIN = Peer("plain", ("192.0.2.7", 5060), "SIP/2.0/UDP 192.0.2.7:5060", ";x-foo=bar",
             "<sip:bob@cust42.example.org>", joined=False, pad=False)  # fmt: skip
PEERS = (SIPP, BARESIP, PLAIN)


def request(
    peer: Peer,
    method: str,
    uri: str,
    call: int,
    cseq: int,
    branch: str,
    to_tag: str = "",
    routes: tuple[bytes, ...] = (),
    body: bytes = b"",
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {peer.via};branch=z9hG4bK{branch}{peer.via_tail}",
        "Max-Forwards: 70",
        f"From: {peer.from_};tag=f{call}",
        f"To: <sip:{1000 + call}@voip.example.com>{to_tag}",
        f"Call-ID: {call}-{peer.name}@{peer.source[0]}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{peer.name}@{peer.source[0]}:{peer.source[1]}>",
        *peer.extra,
    ]
    if routes:
        lines += (
            [f"Route: {b', '.join(routes).decode()}"]
            if peer.joined
            else [f"Route: {r.decode()}" for r in routes]
        )
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {'  ' if peer.pad else ''}{len(body)}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def response(
    peer: Peer, forwarded: bytes, status: int, to_tag: str, body: bytes = b"", echo: bool = False
) -> bytes:
    """What the core (a UAS) answers to ``forwarded``, in ``peer``'s way of writing lists; with
    ``echo`` it also copies our tenant header back (the edge must drop it)."""
    message = parse_message(forwarded)
    assert isinstance(message, Request)
    headers = message.headers()
    vias = [value for key, _, value in headers if key == b"Via"]
    records = [value for key, _, value in headers if key == b"Record-Route"]
    fields = message.fields
    to = fields[b"To"] if b";tag=" in fields[b"To"] else fields[b"To"] + to_tag.encode()
    lines = [b"SIP/2.0 %d Some Reason" % status]
    lines += [b"Via: " + b", ".join(vias)] if peer.joined else [b"Via: " + v for v in vias]
    lines += [b"From: " + fields[b"From"], b"To: " + to, b"Call-ID: " + fields[b"Call-ID"]]
    lines.append(b"CSeq: " + fields[b"CSeq"])
    if records:
        lines += (
            [b"Record-Route: " + b", ".join(records)]
            if peer.joined
            else [b"Record-Route: " + r for r in records]
        )
    if echo:
        lines.append(b"X-Sipzone-Tenant: " + fields[b"x-sipzone-tenant"])
    lines.append(b"Contact: <sip:core@127.0.0.1:5999>")
    if body:
        lines.append(b"Content-Type: application/sdp")
    lines.append(b"Content-Length: %s%d" % (b"  " if peer.pad else b"", len(body)))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclasses.dataclass
class Pair:
    """Two edges with one secret: ``fast`` takes Edge.receive's way, ``general`` the general
    path alone.  :meth:`send` hands both the same datagram and checks they agree."""

    snapshot: Snapshot
    fast: Edge
    general: Edge
    taken: int = 0
    declined: int = 0
    phones: Listener = UDP  # where the phones' messages arrive (the core's: over UDP)
    conn: int | None = None  # on a stream, the phone's connection
    sent: list[Send] = dataclasses.field(default_factory=list)  # every answer, in order

    def send(self, data: bytes, source: tuple[str, int]) -> Sends:
        arrival = (
            Arrival(UDP, source) if source == CORE else Arrival(self.phones, source, self.conn)
        )
        memo = self.fast.memo_for(self.snapshot)
        splicer = self.fast.splicer
        way = splicer.response if data.startswith(b"SIP/2.0 ") else splicer.request
        answer = way(data, arrival, memo)
        if answer is DECLINED:
            self.declined += 1
            answer = general_path(self.fast, data, arrival, self.snapshot)
        else:
            self.taken += 1
        expected = general_path(self.general, data, arrival, self.snapshot)
        assert answer == expected, data
        assert self.fast.stats == self.general.stats, data
        self.sent.extend(answer)
        return answer


def make_pair(phones: Listener = UDP) -> Pair:
    snapshot = make_snapshot(site_upstream="sip:127.0.0.1:5999")
    snapshot = dataclasses.replace(snapshot, settings={BRANCH_SECRET: "s" * 64})
    edges = [Edge(SipConfig(), [UDP, TCP]) for _ in range(2)]
    return Pair(snapshot, *edges, phones=phones, conn=None if phones is UDP else 42)


@pytest.fixture
def pair() -> Pair:
    return make_pair()


def over_tcp(peer: Peer) -> Peer:
    return dataclasses.replace(peer, via=peer.via.replace("/UDP ", "/TCP "))


def one_call(pair: Pair, peer: Peer, call: int) -> Iterator[tuple[bytes, tuple[str, int]]]:
    """A whole call from ``peer`` through the pair (each datagram checked both ways), and
    every datagram it brought, with its source: INVITE, 100, 180, 200, ACK, BYE, 200."""
    invite = request(peer, "INVITE", f"sip:{1000 + call}@voip.example.com", call, 1,
                     f"-{call}-1", body=SDP)  # fmt: skip
    yield invite, peer.source
    ((forwarded, *_),) = pair.send(invite, peer.source)
    tag = f";tag=u{call}"
    for status, body in ((100, b""), (180, b""), (200, SDP)):
        answer = response(peer, forwarded, status, tag if status > 100 else "", body,
                          echo=status == 180)  # fmt: skip
        yield answer, CORE
        ((relayed, *_),) = pair.send(answer, CORE)
    # The route set from the 200's Record-Route, reversed (RFC 3261 §12.1.2).
    ok = parse_message(relayed)
    records = [v for k, _, v in ok.headers() if k == b"Record-Route"]
    routes = tuple(
        item.strip() for value in reversed(records) for item in reversed(value.split(b","))
    )
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        data = request(peer, method, "sip:core@127.0.0.1:5999", call, cseq,
                       f"-{call}-{method}", tag, routes)  # fmt: skip
        yield data, peer.source
        ((forwarded, *_),) = pair.send(data, peer.source)
    answer = response(peer, forwarded, 200, "")
    yield answer, CORE
    pair.send(answer, CORE)


def cancelled_call(pair: Pair, peer: Peer, call: int) -> Iterator[tuple[bytes, tuple[str, int]]]:
    """INVITE, 180, CANCEL and its 200, 487 and its ACK (hop by hop, RFC 3261 §17.1.1.3)."""
    uri = f"sip:{1000 + call}@voip.example.com"
    invite = request(peer, "INVITE", uri, call, 1, f"-{call}-1", body=SDP)
    yield invite, peer.source
    ((forwarded, *_),) = pair.send(invite, peer.source)
    ringing = response(peer, forwarded, 180, f";tag=u{call}")
    yield ringing, CORE
    pair.send(ringing, CORE)
    cancel = request(peer, "CANCEL", uri, call, 1, f"-{call}-1")
    yield cancel, peer.source
    ((cancelled, *_),) = pair.send(cancel, peer.source)
    for status, to in ((200, cancelled), (487, forwarded)):
        answer = response(peer, to, status, f";tag=u{call}")
        yield answer, CORE
        pair.send(answer, CORE)
    ack = request(peer, "ACK", uri, call, 1, f"-{call}-1", f";tag=u{call}")
    yield ack, peer.source
    pair.send(ack, peer.source)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.name)
def test_whole_calls_take_the_fast_path_and_send_what_the_general_path_sends(
    peer: Peer, transport: str
) -> None:
    """Over TCP the phone's messages are a stream reader's frames (the core answers over
    UDP): our Via carries the connection, and the responses go back over it."""
    pair = make_pair(UDP if transport == "udp" else TCP)
    if transport == "tcp":
        peer = over_tcp(peer)
    for call in range(3):
        list(one_call(pair, peer, call))
    for call in range(3, 5):
        list(cancelled_call(pair, peer, call))
    # The first call teaches the path (a dialog's Route entries are checked in full once);
    # after that every datagram of a call is spliced, none parsed.
    assert (pair.taken, pair.declined) == (7 * 3 + 6 * 2 - 1, 1)
    assert pair.fast.stats.forwarded == 3 * 3 + 3 * 2
    assert pair.fast.stats.relayed == 4 * 3 + 3 * 2
    if transport == "tcp":
        ((ringing, *_),) = [pair.send(response(peer, forwarded_invite(pair, peer), 180, ""), CORE)]
        assert (ringing.transport, ringing.conn) == ("tcp", 42)


def test_an_upstream_spread_over_targets_keeps_each_call_on_one_target() -> None:
    """Two targets of one priority (RFC 2782 weights): the fast path picks by Call-ID as the
    general path does, so every request of a call, CANCEL and ACK included, reaches one."""
    pair = make_pair()
    hops = [
        Hop(Target("udp", *CORE), 10, 1, "a"),
        Hop(Target("udp", "127.0.0.1", 5998), 10, 1, "b"),
    ]
    choice = choose(hops, lambda _: True)
    assert choice is not None and choice.spread is not None
    for edge in (pair.fast, pair.general):
        edge.set_upstreams({"sip:127.0.0.1:5999": choice})
    for call in range(12):
        list(one_call(pair, SIPP, call))
    for call in range(12, 16):
        list(cancelled_call(pair, SIPP, call))
    assert pair.declined == 1  # the first call's Route, as with one target
    ports: dict[bytes, set[int]] = {}
    for send in pair.sent:
        if send.port in (5998, 5999):
            ports.setdefault(parse_message(send.data).fields[b"Call-ID"], set()).add(send.port)
    assert len(ports) == 16 and all(len(used) == 1 for used in ports.values())
    assert set().union(*ports.values()) == {5998, 5999}


def forwarded_invite(pair: Pair, peer: Peer) -> bytes:
    invite = request(peer, "INVITE", "sip:99@voip.example.com", 99, 1, "-99", body=SDP)
    ((send, *_),) = [pair.send(invite, peer.source)]
    assert b";sz-c=42" in send.data.split(b"\r\n", 2)[1]
    return send.data


def test_the_core_never_sees_a_peers_tenant_claim_nor_a_phone_ours(pair: Pair) -> None:
    """A phone's own X-Sipzone-Tenant is dropped on the way in; the one a core echoes in a
    response is dropped on the way out (the shape decides, once, which lines go on)."""
    forged = request(SIPP, "INVITE", "sip:1@voip.example.com", 1, 1, "-x", body=SDP).replace(
        b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-Sipzone-Tenant: someone-else\r\n"
    )
    for _ in range(2):  # learnt, then spliced
        ((send,),) = [pair.send(forged, SIPP.source)]
        assert b"someone-else" not in send.data
        assert send.data.count(b"X-Sipzone-Tenant: provider\r\n") == 1
    assert pair.taken == 2
    echoed = response(SIPP, send.data, 180, ";tag=u", echo=True)
    ((relayed,),) = [pair.send(echoed, CORE)]
    assert b"X-Sipzone" not in relayed.data
    assert pair.taken == 3


def test_what_the_fast_path_must_decline(pair: Pair) -> None:
    """Each of these is learnt once and still declined: the general path decides."""
    list(one_call(pair, SIPP, 1))
    base = request(SIPP, "INVITE", "sip:7@voip.example.com", 7, 1, "-7", body=SDP)
    mf = b"Max-Forwards: 70"
    cases = {
        "folded line": base.replace(b"\r\nCSeq: 1", b"\r\n  CSeq: 1"),
        "tab": base.replace(b"CSeq: 1 ", b"CSeq: 1\t"),
        "trailing space": base.replace(b"CSeq: 1 INVITE", b"CSeq: 1 INVITE "),
        "Max-Forwards 0": base.replace(mf, b"Max-Forwards: 0"),
        "Proxy-Require": base.replace(mf, mf + b"\r\nProxy-Require: x"),
        "two Vias": base.replace(mf, mf + b"\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKq"),
        "not served": base.replace(b"@voip.example.com SIP", b"@unknown.example.net SIP"),
        "foreign Route": base.replace(mf, mf + b"\r\nRoute: <sip:evil.example.net;lr>"),
        "REGISTER": base.replace(b"INVITE", b"REGISTER"),
        "compact From twice": base.replace(mf, mf + b"\r\nf: <sip:x@y>;tag=1"),
        "quoted Via": base.replace(b";branch=", b';x="a;branch=b";branch='),
    }  # fmt: skip
    for name, data in cases.items():
        for _ in range(2):
            before = pair.taken
            pair.send(data, SIPP.source)
            assert pair.taken == before, name


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_mutated_calls_get_the_same_answer_both_ways(transport: str) -> None:
    """Small mutations of every message of whole calls (learnt first): the fast path sends
    what the general path sends, or declines; never anything else."""
    pair = make_pair(UDP if transport == "udp" else TCP)
    peers = PEERS if transport == "udp" else tuple(map(over_tcp, PEERS))
    rng = random.Random(5061)
    corpus = [item for n, peer in enumerate(peers) for item in one_call(pair, peer, n)]
    for n, peer in enumerate(peers):
        corpus += cancelled_call(pair, peer, 10 + n)
    taken_before, declined_before = pair.taken, pair.declined
    for _ in range(4000):
        data, source = rng.choice(corpus)
        pair.send(mutated(data, rng), source)
    assert pair.taken - taken_before > 800
    assert pair.declined - declined_before > 800


def framed(chunks: list[bytes], frames: bool) -> list[object]:
    """What a stream reader yields for ``chunks`` (messages as parsed, or the exception that
    closes the connection), taking whole frames first when ``frames`` (as the transport does)."""
    reader = StreamReader()
    out: list[object] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        while True:
            frame = reader.next_frame() if frames else None
            try:
                message = parse_message(frame) if frame is not None else reader.next_message()
            except MalformedMessage as exc:
                return [*out, (type(exc), str(exc))]
            if message is None:
                break
            out.append((type(message), message.fields, message.body, message.head))
    return out


def test_a_stream_frames_as_the_reader_parses() -> None:
    """Taking a plain Content-Length frame first never changes what a stream carries: the same
    messages, or the same error (after which the connection closes), for whole calls cut at
    random and mutated."""
    rng = random.Random(5062)
    pair = make_pair(TCP)
    corpus = [data for data, _ in one_call(pair, over_tcp(BARESIP), 1)]
    corpus += [data for data, _ in one_call(pair, over_tcp(SIPP), 2)]
    corpus += [
        corpus[0].replace(b"Content-Length: ", b"l: "),
        corpus[0].replace(b"Content-Length: ", b"content-length: "),
        corpus[0].replace(b"\r\nContent-Length: ", b"\r\nl: 3\r\nContent-Length: "),
        b"\r\n\r\n" + corpus[1],
    ]
    for _ in range(3000):
        stream = b"".join(
            mutated(data, rng) if rng.random() < 0.3 else data
            for data in rng.sample(corpus, rng.randint(1, 4))
        )
        cuts = sorted(rng.sample(range(1, len(stream)), min(3, len(stream) - 1)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert framed(chunks, frames=True) == framed(chunks, frames=False), stream
