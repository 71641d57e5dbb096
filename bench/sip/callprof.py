"""Whole calls through the edge policy in this process, without sockets: the CPU per call of
``Edge.receive`` for the six messages a proxied call brings (INVITE, 180, 200, ACK, BYE, 200,
shaped as ../shared/bench/call-cpu.sh's sipp scenarios send them) and, with --profile, where
it goes (cProfile, by function).  The kernel and the transport around it are not in these
figures: `perf record` on a served process shows those.

usage: callprof.py [CALLS] [--profile=FILE] [--top=N]   (CALLS default 20000)

The inputs of every call are built first (the responses carry the Vias the edge wrote, so
they are made from what it forwarded), then replayed on a fresh edge with the same secret,
which returns the same bytes: the edge keeps no state per call.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from sipzone.model.snapshot import Snapshot
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.sip import BRANCH_SECRET, SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.values import Arrival, Listener

LISTENER = Listener("udp", "127.0.0.1", 5070)
UAC = ("127.0.0.1", 5061)
UAS = ("127.0.0.1", 5090)
DOMAIN = "voip.example.com"
KINDS = ("INVITE", "180", "200", "ACK", "BYE", "200 (BYE)")  # what build_call returns, in order
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def snapshot(n: int = 10000) -> Snapshot:
    rules = [(f"customer{i}.example.com", "acme") for i in range(1, n + 1)]
    rules.append((DOMAIN, "acme"))
    tenants = TenancyTree([Tenant("acme", "provider", upstream=f"sip:127.0.0.1:{UAS[1]}")])
    return Snapshot.build(1, tenants, rules, settings={BRANCH_SECRET: "bench"})


def header(data: bytes, name: bytes) -> list[bytes]:
    prefix = name.lower() + b":"
    return [line for line in data.split(b"\r\n") if line.lower().startswith(prefix)]


def request(method: str, uri: str, i: int, cseq: int, to_tag: str, routes: list[bytes]) -> bytes:
    body = SDP if method == "INVITE" else ""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch=z9hG4bK-{i}-{cseq}-{method}",
        f"From: <sip:caller@{DOMAIN}>;tag={i}t",
        f"To: <sip:{i}@{DOMAIN}>{to_tag}",
        f"Call-ID: {i}-call@{UAC[0]}",
        f"CSeq: {cseq} {method}",
        *(r.decode() for r in routes),
        f"Contact: <sip:caller@{UAC[0]}:{UAC[1]}>",
        "Max-Forwards: 70",
        *(["Content-Type: application/sdp"] if body else []),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def response(status: int, reason: str, forwarded: bytes, i: int, with_body: bool) -> bytes:
    """The UAS's answer to what the edge forwarded: its Vias, From, To with a tag, Call-ID,
    CSeq and Record-Route echoed, as call-cpu.sh's UAS does."""
    body = SDP.encode() if with_body else b""
    to = header(forwarded, b"To")[0]
    if b";tag=" not in to:
        to += b";tag=%du" % i
    lines = [
        b"SIP/2.0 %d %s" % (status, reason.encode()),
        *header(forwarded, b"Via"),
        *header(forwarded, b"From"),
        to,
        *header(forwarded, b"Call-ID"),
        *header(forwarded, b"CSeq"),
        *header(forwarded, b"Record-Route"),
        b"Contact: <sip:%s:%d;transport=udp>" % (UAS[0].encode(), UAS[1]),
        *([b"Content-Type: application/sdp"] if body else []),
        b"Content-Length: %d" % len(body),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def build_call(edge: Edge, snap: Snapshot, i: int) -> list[tuple[bytes, tuple[str, int]]]:
    """The six datagrams the edge receives for call ``i``, with their sources."""
    inputs: list[tuple[bytes, tuple[str, int]]] = []

    def through(data: bytes, source: tuple[str, int], to: tuple[str, int]) -> bytes:
        sends = edge.receive(data, Arrival(LISTENER, source), snap)
        assert len(sends) == 1 and (sends[0].host, sends[0].port) == to, (data, sends)
        inputs.append((data, source))
        return sends[0].data

    invite = through(request("INVITE", f"sip:{i}@{DOMAIN}", i, 1, "", []), UAC, UAS)
    through(response(180, "Ringing", invite, i, False), UAS, UAC)
    ok = through(response(200, "OK", invite, i, True), UAS, UAC)
    to_tag = f";tag={i}u"
    routes = [b"Route: " + rr.split(b":", 1)[1].strip() for rr in header(ok, b"Record-Route")]
    contact = f"sip:{UAS[0]}:{UAS[1]};transport=udp"
    through(request("ACK", contact, i, 1, to_tag, routes), UAC, UAS)
    bye = through(request("BYE", contact, i, 2, to_tag, routes), UAC, UAS)
    through(response(200, "OK", bye, i, False), UAS, UAC)
    return inputs


def main(calls: int, profile: str | None, top: int) -> None:
    snap = snapshot()
    config = SipConfig(listen=("udp:127.0.0.1:5070",))
    builder = Edge(config, [LISTENER])
    inputs = [
        (data, Arrival(LISTENER, source))
        for i in range(calls)
        for data, source in build_call(builder, snap, i)
    ]
    edge = Edge(config, [LISTENER])
    receive = edge.receive
    for data, arrival in inputs[:600]:  # warm the memos as a running edge has them
        receive(data, arrival, snap)
    profiler = cProfile.Profile() if profile else None
    start = time.process_time()
    if profiler:
        profiler.enable()
    for data, arrival in inputs:
        receive(data, arrival, snap)
    if profiler:
        profiler.disable()
    elapsed = time.process_time() - start
    print(
        f"{calls} calls, {len(inputs)} messages: {elapsed * 1e6 / calls:.1f} µs CPU per call "
        f"in Edge.receive ({elapsed * 1e6 / len(inputs):.1f} µs per message)"
        + (" (under cProfile)" if profiler else "")
    )
    if profiler and profile:
        profiler.dump_stats(profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(top)
        return
    # The same messages again, one kind at a time (the edge is stateless: order is free).
    parts = []
    for k, kind in enumerate(KINDS):
        start = time.process_time()
        for data, arrival in inputs[k :: len(KINDS)]:
            receive(data, arrival, snap)
        parts.append(f"{kind} {(time.process_time() - start) * 1e6 / calls:.1f}")
    print("µs per message by kind: " + ", ".join(parts))


if __name__ == "__main__":
    options = {a.split("=", 1)[0]: a.partition("=")[2] for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(
        int(args[0]) if args else 20000,
        options.get("--profile") or None,
        int(options.get("--top") or 30),
    )
