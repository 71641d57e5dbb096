"""Nothing a peer sends may raise out of the edge: mutated torture messages, both paths."""

from __future__ import annotations

import random

from sipzone.model.snapshot import Snapshot
from sipzone.sip import SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.message import MalformedMessage, StreamReader
from sipzone.sip.values import Arrival, Listener
from tests.sip.conftest import RFC4475, fast_path, general_path, make_snapshot

SEEDS = sorted(RFC4475.glob("*.dat"))


def mutations(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            del out[at : at + rng.randint(1, 20)]
        elif kind == 1:
            out[at:at] = rng.choice([b"\r\n", b":", b";", b",", b" ", b"<", b">", b'"', b"\x00"])
        elif kind == 2 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        else:
            out[at:at] = out[rng.randrange(len(out) + 1) :][: rng.randint(1, 40)]
    return bytes(out)


def test_mutated_messages_never_raise() -> None:
    rng = random.Random(4475)
    snapshot: Snapshot = make_snapshot(
        extra_rules=(("example.com", "acme"), ("*.example.com", "acme"), ("*.example.net", "acme"))
    )
    udp = Listener("udp", "127.0.0.1", 5070)
    tcp = Listener("tcp", "127.0.0.1", 5070)
    edge = Edge(SipConfig(), [udp, tcp])
    seeds = [p.read_bytes() for p in SEEDS]
    answered = 0
    for i in range(3000):
        data = mutations(rng.choice(seeds), rng)
        for listener in (udp, tcp):
            conn = i if listener is tcp else None
            sends = edge.receive(data, Arrival(listener, ("192.0.2.1", 5060), conn), snapshot)
            answered += bool(sends)
        if data.startswith(b"OPTIONS "):
            fast = fast_path(edge, data, Arrival(udp, ("192.0.2.1", 5060)), snapshot)
            if fast is not None:
                assert fast == general_path(edge, data, Arrival(udp, ("192.0.2.1", 5060)), snapshot)
    assert answered > 0


def test_mutated_streams_only_raise_malformed_message() -> None:
    rng = random.Random(5626)
    seeds = [p.read_bytes() for p in SEEDS]
    framed = 0
    for _ in range(300):
        reader = StreamReader()
        stream = b"".join(mutations(rng.choice(seeds), rng) for _ in range(3))
        at = 0
        while at < len(stream):
            step = rng.randint(1, 200)
            reader.receive_data(stream[at : at + step])
            at += step
            try:
                while reader.next_message() is not None:
                    framed += 1
            except MalformedMessage:
                break  # the transport answers if it can and closes the connection
    assert framed > 0
