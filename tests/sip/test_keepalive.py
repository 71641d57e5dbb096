"""The OPTIONS keep-alive hot path: bytes in, bytes out, equal to what the general path sends.

The path has two ways in: a peer's first ping is split line by line (and teaches the edge the
order of its header lines); later pings of that order are taken apart by one compiled pattern.
Both must decline or answer exactly as the other would, and answer as the general path does
(``general_path``: parse, then :meth:`Edge.handle`).  :meth:`Edge.receive`, the one entry
point, takes the fast path first.
"""

from __future__ import annotations

import random
import socket

import pytest

from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.sip import SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.values import Arrival, Listener, Sends
from tests.sip.conftest import EdgeThread, fast_path, general_path, make_snapshot

UDP = Listener("udp", "127.0.0.1", 5070)
TCP = Listener("tcp", "127.0.0.1", 5070)
SOURCE = ("192.0.2.7", 40000)
AT = Arrival(UDP, SOURCE)


def ping(
    n: int,
    via: str = "SIP/2.0/UDP 192.0.2.7:40000",
    uri: str = "sip:ping@voip.example.com",
    mf: str = "70",
) -> bytes:
    """A ping as sipp's sip-cpu.sh scenario sends it: branch, tag and Call-ID vary."""
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: {via};branch=z9hG4bK-{n}-1-0\r\n"
        f"Max-Forwards: {mf}\r\n"
        f"To: <{uri}>\r\n"
        f"From: <sip:probe@192.0.2.7:40000>;tag={n}\r\n"
        f"Call-ID: {n}-4711@192.0.2.7\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        "Contact: <sip:probe@192.0.2.7:40000>\r\n"
        "User-Agent: sip-cpu\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def snapshot() -> Snapshot:
    return make_snapshot()


def adopted(snapshot: Snapshot, config: SipConfig | None = None) -> Edge:
    edge = Edge(config or SipConfig(), [UDP, TCP])
    edge.memo_for(snapshot)  # the edge takes up the snapshot, but learns no shape yet
    return edge


def split_only(edge: Edge, data: bytes, snapshot: Snapshot, at: Arrival = AT) -> Sends | None:
    """The answer by the line-by-line way in, whatever patterns the edge has learnt."""
    edge.keepalives.forget_shapes()
    return fast_path(edge, data, at, snapshot)


@pytest.mark.parametrize(
    ("via", "uri", "to_source"),
    [
        ("SIP/2.0/UDP 192.0.2.7:40000", "sip:ping@voip.example.com", True),
        ("SIP/2.0/UDP 192.0.2.7:40000;rport", "sip:ping@a.teams.example.com", True),
        ("SIP/2.0/UDP 10.0.0.1:5062;rport", "sip:ping@voip.example.com", True),  # NAT
        ("SIP/2.0/UDP 192.0.2.7:5062", "sip:ping@voip.example.com", False),  # §18.2.2
        ("SIP/2.0/UDP [2001:db8::1]", "sip:ping@voip.example.com", False),
        ("SIP/2.0/UDP 192.0.2.7:40000", "sip:ping@192.0.2.1", True),  # the To decides
        ("SIP/2.0/UDP 192.0.2.7:40000", "sip:ping@unknown.example.org", True),  # 403
    ],
)
def test_both_ways_in_answer_as_the_general_path(
    snapshot: Snapshot, via: str, uri: str, to_source: bool
) -> None:
    edge = adopted(snapshot)
    for n in range(1, 4):  # the first is split line by line, the others by the pattern
        data = ping(n, via, uri)
        learnt = bool(edge.keepalives.shapes)
        answer = fast_path(edge, data, AT, snapshot)
        assert learnt == (n > 1)
        (general,) = general_path(edge, data, AT, snapshot)
        assert answer == (general,)
        assert ((general.host, general.port) == SOURCE) == to_source
        assert edge.receive(data, AT, snapshot) == answer  # the one entry point takes it
        assert split_only(adopted(snapshot), data, snapshot) == answer


def test_a_dropped_scanner_ping_is_answered_with_nothing(snapshot: Snapshot) -> None:
    edge = adopted(snapshot, SipConfig(drop_unknown=True))
    for n in (1, 2):
        data = ping(n, uri="sip:ping@unknown.example.org")
        assert fast_path(edge, data, AT, snapshot) == ()
        assert general_path(edge, data, AT, snapshot) == ()
        assert edge.receive(data, AT, snapshot) == ()


def test_a_ping_whose_via_names_our_socket_is_never_answered_there(snapshot: Snapshot) -> None:
    """Without rport the answer goes to the Via's port (RFC 3261 §18.2.2): when that is one of
    our own sockets the fast path leaves it to the general path, which drops it (a loop)."""
    edge = adopted(snapshot)
    at = Arrival(UDP, ("127.0.0.1", 40001))
    for n in (1, 2):  # split line by line, then by the learnt pattern
        data = ping(n, via="SIP/2.0/UDP 127.0.0.1:5070")
        assert fast_path(edge, data, at, snapshot) is None
        assert edge.receive(data, at, snapshot) == ()
    assert edge.stats.requests[("other", "loop")] == 2
    assert edge.stats.keepalives == 0


def test_values_the_pattern_must_decline(snapshot: Snapshot) -> None:
    edge = adopted(snapshot)
    assert fast_path(edge, ping(1), AT, snapshot) is not None  # learnt
    base = ping(2)
    for old, new in [
        (b"Max-Forwards: 70", b"Max-Forwards: 0"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256"),
        (b"Max-Forwards: 70", b"Max-Forwards: 0070"),
        (b"CSeq: 2 OPTIONS", b"CSeq: 2147483648 OPTIONS"),  # 2**31
        (b"CSeq: 2 OPTIONS", b"CSeq: 2 INVITE"),
        (b";branch=z9hG4bK-2-1-0", b";branch=z9hG4bK-2;branch=x"),
        (b";branch=z9hG4bK-2-1-0", b";branch=a b"),
        (b";tag=2\r\n", b";tag=\r\n"),
        (b";tag=2\r\n", b';tag=2;x="y"\r\n'),
        (b"Call-ID: 2-4711", b"Call-ID: 2 4711"),
        (b"Content-Length: 0", b"Content-Length: 00"),
    ]:
        data = base.replace(old, new)
        assert data != base
        assert fast_path(edge, data, AT, snapshot) is None, new
        assert split_only(adopted(snapshot), data, snapshot) is None, new
        assert edge.receive(data, AT, snapshot)  # the general path still answers
    # The limits themselves are fine; a lone CR inside a value is left to the line split.
    for old, new in [
        (b"User-Agent: sip-cpu", b"User-Agent: sip\rcpu"),
        (b"Max-Forwards: 70", b"Max-Forwards: 255"),
        (b"Max-Forwards: 70", b"Max-Forwards: 001"),
        (b"CSeq: 2 OPTIONS", b"CSeq: 2147483647 OPTIONS"),
        (b"SIP/2.0/UDP", b"SIP/2.0/TCP"),  # over UDP answered as a UDP Via would be
    ]:
        data = base.replace(old, new)
        general = general_path(edge, data, AT, snapshot)
        assert fast_path(edge, data, AT, snapshot) == general


def test_a_new_order_of_header_lines_is_learnt_and_the_oldest_forgotten(
    snapshot: Snapshot,
) -> None:
    edge = adopted(snapshot)
    base = ping(1)
    head, _, _ = base.partition(b"\r\n\r\n")
    first, *lines = head.split(b"\r\n")
    rng = random.Random(3261)
    for n in range(20):
        rng.shuffle(lines)
        data = b"\r\n".join([first, *lines]) + b"\r\n\r\n"
        answer = fast_path(edge, data, AT, snapshot)
        assert answer is not None and answer == general_path(edge, data, AT, snapshot)
        assert len(edge.keepalives.shapes) <= 8, n


def mutated(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    pieces = [b";branch=", b";tag=", b";rport", b"\r\n", b"\r", b"\n", b" ", b":", b";", b"@",
              b"0", b"9", b"<", b">", b'"', b",", b"Via: ", b"\x00", b"\xff"]  # fmt: skip
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out) + 1)
        kind = rng.randrange(3)
        if kind == 0 and out:
            del out[at : at + rng.randint(1, 6)]
        elif kind == 1:
            out[at:at] = rng.choice(pieces)
        elif out:
            out[min(at, len(out) - 1)] = rng.randrange(32, 127)
    return bytes(out)


@pytest.mark.parametrize("at", [AT, Arrival(TCP, SOURCE, 7)], ids=["udp", "tcp"])
def test_mutated_pings_get_the_same_answer_both_ways(snapshot: Snapshot, at: Arrival) -> None:
    """Small mutations of a learnt ping: the pattern and the line-by-line split agree, and
    whatever they answer is what the general path answers (over a stream: on the connection
    the ping came in on, whatever its Via says)."""
    rng = random.Random(5060)
    edge = adopted(snapshot)
    reference = adopted(snapshot)
    answered = declined = 0
    for n in range(1, 3001):
        data = mutated(ping(n), rng)
        answer = fast_path(edge, data, at, snapshot)
        assert split_only(reference, data, snapshot, at) == answer, data
        if answer is None:
            declined += 1
            continue
        answered += 1
        assert answer == general_path(edge, data, at, snapshot), data
    assert answered > 500 and declined > 500  # both kinds were exercised


# -- over real sockets, batched (Linux) and on the event loop's own transport -----------------


@pytest.mark.parametrize("batched", [True, False])
def test_udp_answers_to_the_source_or_the_via_port(
    edge_factory: type[EdgeThread], batched: bool
) -> None:
    config = SipConfig(listen=("udp:127.0.0.1:0",), batched_udp=batched)
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    port = edge.port("udp")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
    ):
        client.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        client.settimeout(5)
        other.settimeout(5)
        mine, theirs = client.getsockname()[1], other.getsockname()[1]
        for n in range(1, 4):  # the first ping teaches the pattern, the rest use it
            client.sendto(ping(n, f"SIP/2.0/UDP 127.0.0.1:{mine}"), ("127.0.0.1", port))
            reply = client.recv(65535)
            assert reply.startswith(b"SIP/2.0 200 OK\r\n")
            assert f"Contact: <sip:voip.example.com:{port};transport=udp>".encode() in reply
            # No rport: the answer goes to the port in the Via (RFC 3261 §18.2.2) ...
            client.sendto(ping(n, f"SIP/2.0/UDP 127.0.0.1:{theirs}"), ("127.0.0.1", port))
            assert other.recv(65535).startswith(b"SIP/2.0 200 OK\r\n")
            # ... with rport, to the source port (RFC 3581).
            client.sendto(ping(n, f"SIP/2.0/UDP 127.0.0.1:{theirs};rport"), ("127.0.0.1", port))
            assert f";rport={mine}".encode() in client.recv(65535)
        unknown = ping(9, f"SIP/2.0/UDP 127.0.0.1:{mine}", "sip:ping@unknown.example.org")
        client.sendto(unknown, ("127.0.0.1", port))
        assert client.recv(65535).startswith(b"SIP/2.0 403 Domain Not Served\r\n")
