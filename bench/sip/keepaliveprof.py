"""OPTIONS keep-alives through the edge policy in this process, without sockets: the CPU per
ping of ``Edge.receive`` (the keep-alive fast path) over callprof.py's 10,001 domains, pings
from 500 peers to voip.example.com.  With PYTHONPATH=OTHER/src it measures another tree's
code, so two trees compare A B A B on the same inputs (the kernel and transport are not in it).

usage: keepaliveprof.py [PINGS]   (default 100000)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sipzone.sip import SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.values import Arrival, Listener

sys.path.insert(0, str(Path(__file__).parent))
from callprof import snapshot  # a script beside this one, not a package

LISTENER = Listener("udp", "127.0.0.1", 5070)
PEERS = 500


def ping(i: int) -> tuple[bytes, Arrival]:
    port = 6000 + i % PEERS
    data = (
        f"OPTIONS sip:voip.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{i}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:voip.example.com>\r\nFrom: <sip:ping@127.0.0.1>;tag={i}\r\n"
        f"Call-ID: {i}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    return data, Arrival(LISTENER, ("127.0.0.1", port))


def main(count: int) -> None:
    snap = snapshot()
    edge = Edge(SipConfig(), [LISTENER])
    pings = [ping(i) for i in range(count)]
    for data, arrival in pings[: 4 * PEERS]:  # learn every peer's shape first
        edge.receive(data, arrival, snap)
    start = time.process_time()
    for data, arrival in pings:
        answer = edge.receive(data, arrival, snap)
    spent = time.process_time() - start
    assert answer and answer[0].data.startswith(b"SIP/2.0 200 OK"), answer
    print(f"{count} pings: {spent / count * 1e6:.2f} µs CPU per ping in Edge.receive")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100000)
