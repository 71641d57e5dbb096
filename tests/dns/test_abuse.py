"""What a hostile client can hold or make us send (issue 7, items 7 and RRL): TCP connections
that never query, too many connections, and forged-source UDP floods; real sockets on loopback."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import dns.message
import dns.rcode
import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.rrl import RateLimiter, client_block
from tests.conftest import Cli, Server, free_port
from tests.dns.conftest import LiveDns, dig

SHORT = DnsConfig(tcp_idle_timeout=1.0, tcp_query_timeout=0.5)
OTHER_NET = "127.0.1.1"  # another /24 (and address) than 127.0.0.1, still this machine


def query(name: str = "voip.example.com", rdtype: str = "A", qid: int = 1) -> bytes:
    return dns.message.make_query(name, rdtype, id=qid).to_wire()


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.settimeout(3)
    return s


def ask_tcp(s: socket.socket, qid: int = 1) -> dns.message.Message:
    s.sendall(framed(query(qid=qid)))
    head = recv_exactly(s, 2)
    return dns.message.from_wire(recv_exactly(s, struct.unpack("!H", head)[0]))


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def closed(s: socket.socket, within: float) -> bool:
    """Whether the server closes ``s`` within ``within`` seconds (we send nothing more)."""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def held_for(s: socket.socket, trick: Callable[[socket.socket, int], None], limit: float) -> float:
    """Play ``trick`` (called every 0.2 s with a step count) until the server closes ``s``;
    the seconds that took, or ``limit`` if it never did."""
    start = time.monotonic()
    s.settimeout(0.2)
    step = 0
    while time.monotonic() - start < limit:
        try:
            trick(s, step)
        except (BrokenPipeError, ConnectionResetError):
            break
        step += 1
        try:
            if s.recv(4096) == b"":
                break
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
    return time.monotonic() - start


def zero_length_frames(s: socket.socket, step: int) -> None:
    s.sendall(b"\x00\x00")


def a_byte_at_a_time(s: socket.socket, step: int) -> None:
    wire = framed(query())
    s.sendall(wire[step % len(wire) : step % len(wire) + 1])


def half_a_prefix_then_zero_frames(s: socket.socket, step: int) -> None:
    s.sendall(b"\x00" if step == 0 else b"\x00\x00")


@pytest.mark.parametrize(
    "trick", [zero_length_frames, a_byte_at_a_time, half_a_prefix_then_zero_frames]
)
def test_framing_tricks_do_not_hold_a_tcp_connection(
    live_dns: type[LiveDns], trick: Callable[[socket.socket, int], None]
) -> None:
    live = live_dns(config=SHORT)
    with connect(live.port) as s:
        # idle 1.0 s after the connection opened (+ 0.5 s for a frame begun just before it).
        assert held_for(s, trick, limit=6.0) < 2.5
    assert live.service.stats.tcp_timed_out == 1


def test_a_client_that_keeps_asking_keeps_its_connection(live_dns: type[LiveDns]) -> None:
    live = live_dns(config=SHORT)
    with connect(live.port) as s:
        for i in range(8):  # 2.4 s, well past the idle timeout, a query every 0.3 s
            assert ask_tcp(s, qid=i).rcode() == dns.rcode.NOERROR
            time.sleep(0.3)
        # Then silence: closed after the idle timeout.
        start = time.monotonic()
        assert closed(s, within=4.0)
        assert 0.5 < time.monotonic() - start < 2.0


def test_connections_beyond_the_per_source_cap_are_closed_at_once(
    live_dns: type[LiveDns],
) -> None:
    live = live_dns(config=DnsConfig(tcp_max_per_source=3))
    held = [connect(live.port) for _ in range(3)]
    try:
        for i, s in enumerate(held):
            assert ask_tcp(s, qid=i).rcode() == dns.rcode.NOERROR
        start = time.monotonic()
        with connect(live.port) as extra:
            assert closed(extra, within=2.0)
        assert time.monotonic() - start < 1.0
        # Another source is not affected, and a connection given back can be used again.
        with connect(live.port, OTHER_NET) as other:
            assert ask_tcp(other).rcode() == dns.rcode.NOERROR
        held.pop().close()
        deadline = time.monotonic() + 2
        while True:  # the server notices the close on its next read
            with connect(live.port) as again:
                if not closed(again, within=0.2):
                    assert ask_tcp(again).rcode() == dns.rcode.NOERROR
                    break
            assert time.monotonic() < deadline
        assert live.service.stats.tcp_over_source_cap >= 1
    finally:
        for s in held:
            s.close()


def test_connections_beyond_the_total_cap_are_closed_at_once(live_dns: type[LiveDns]) -> None:
    live = live_dns(config=DnsConfig(tcp_max_connections=4, tcp_max_per_source=100))
    assert live.service.tcp_cap == 4
    held = [connect(live.port, source) for source in ("127.0.0.1", "127.0.0.1", OTHER_NET,
                                                       "127.0.2.1")]  # fmt: skip
    try:
        for s in held:
            assert ask_tcp(s).rcode() == dns.rcode.NOERROR
        for source in ("127.0.0.1", "127.0.3.1"):
            with connect(live.port, source) as extra:
                assert closed(extra, within=2.0)
        assert live.service.stats.tcp_over_cap == 2
        # UDP still answers.
        assert dig(live.port, "voip.example.com", "A").status == "NOERROR"
    finally:
        for s in held:
            s.close()


def test_serve_tcp_options(cli: Cli, serve: Callable[..., Server]) -> None:
    cli("init", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.10", "--region", "eu", check=True)
    cli("domain", "add", "voip.example.com", "--owner", "provider", check=True)
    port = free_port()
    serve(
        "--dns", f"127.0.0.1:{port}", "--dns-tcp-idle-timeout", "1",
        "--dns-tcp-max-per-source", "2", "--dns-tcp-max-connections", "100",
    )  # fmt: skip
    with connect(port) as a, connect(port) as b:
        assert ask_tcp(a).rcode() == ask_tcp(b).rcode() == dns.rcode.NOERROR
        with connect(port) as c:
            assert closed(c, within=2.0)
        start = time.monotonic()
        assert closed(a, within=4.0)
        assert time.monotonic() - start < 2.0


# ------------------------------------------------------------------ response rate limiting


def burst(port: int, wire: bytes, count: int, source: str = "127.0.0.1") -> list[bytes]:
    """Send ``count`` copies of ``wire`` at once from ``source``; the replies that come."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((source, 0))
        for _ in range(count):
            s.sendto(wire, ("127.0.0.1", port))
        replies = []
        s.settimeout(0.5)  # after the last reply
        try:
            while True:
                replies.append(s.recv(4096))
        except TimeoutError:
            return replies


def split(replies: list[bytes]) -> tuple[int, int]:
    """(full answers, truncated slips)."""
    tc = sum(1 for r in replies if r[2] & 0x02)
    for r in replies:
        if r[2] & 0x02:
            reply = dns.message.from_wire(r)
            assert (reply.answer, reply.question[0].to_text()) == ([], "voip.example.com. IN A")
    return len(replies) - tc, tc


@pytest.fixture
def limited(live_dns: type[LiveDns]) -> Iterator[LiveDns]:
    yield live_dns(config=DnsConfig(rrl=5, rrl_slip=2))


def test_rrl_limits_identical_answers_per_client_network(limited: LiveDns) -> None:
    port = limited.port
    full, slips = split(burst(port, query(), 200))
    assert 5 <= full <= 8  # the burst allowance, plus what refills while the burst lasts
    assert 88 <= slips <= 100  # slip 2: every other dropped response goes out truncated
    stats = limited.service.stats
    assert stats.rrl_slipped == slips
    assert stats.rrl_dropped == 200 - full - slips
    # Another /24 has its own allowance; so has another answer for the same network.
    assert split(burst(port, query(), 5, OTHER_NET)) == (5, 0)
    assert split(burst(port, query("geo.example.com"), 5))[0] == 5
    # TCP is never limited.
    assert dig(port, "voip.example.com", "A", "+tcp").rdata("A")
    time.sleep(1.1)  # a second later the account has earned its 5 again
    assert split(burst(port, query(), 5)) == (5, 0)


def test_rrl_counts_random_names_of_a_zone_as_one_nxdomain_answer(limited: LiveDns) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for i in range(40):
            s.sendto(query(f"r{i}.example.com"), ("127.0.0.1", limited.port))
        replies = []
        try:
            while True:
                replies.append(dns.message.from_wire(s.recv(4096)))
        except TimeoutError:
            pass
    full = [r for r in replies if not r.flags & dns.flags.TC]
    assert all(r.rcode() == dns.rcode.NXDOMAIN for r in full)
    assert 5 <= len(full) <= 8


def test_rrl_is_off_by_default_and_costs_nothing(live_dns: type[LiveDns]) -> None:
    live = live_dns()
    assert live.service.rrl is None
    # The UDP path calls the authority's responder itself, no wrapper.
    assert live.service._udp_responder() == live.service.authority.respond
    assert split(burst(live.port, query(), 100)) == (100, 0)


def test_rrl_slip_zero_sends_nothing_beyond_the_rate() -> None:
    now = [0.0]
    rrl = RateLimiter(3, slip=0, clock=lambda: now[0])
    q = query()
    answer = b"\x00\x01\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:]
    sent = [rrl.check(q, answer, "192.0.2.1") for _ in range(10)]
    assert sent[:3] == [answer] * 3 and sent[3:] == [None] * 7
    now[0] = 2.0  # refilled to the rate, not beyond
    assert sum(rrl.check(q, answer, "192.0.2.200") is not None for _ in range(10)) == 3
    assert rrl.check(q, answer, "192.0.3.1") == answer  # another /24


def test_rrl_steady_rate_over_simulated_seconds() -> None:
    now = [0.0]
    rrl = RateLimiter(10, slip=1, clock=lambda: now[0])
    q = query()
    answer = b"\x00\x01\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:]
    full = 0
    for i in range(3000):  # 1,000 queries a second for 3 s
        now[0] = i / 1000
        out = rrl.check(q, answer, b"\x7f\x00\x00\x01")
        assert out is not None  # slip 1: every dropped response goes out truncated
        full += not out[2] & 0x02
    assert 10 + 29 <= full <= 10 + 31


def test_client_blocks() -> None:
    assert client_block("192.0.2.77") == bytes([192, 0, 2])
    assert client_block("::ffff:192.0.2.77") == bytes([192, 0, 2])
    assert client_block(socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.77")) == bytes(
        [192, 0, 2]
    )
    assert client_block("2001:db8:1:2ff::1") == bytes.fromhex("20010db80001 02")
    assert client_block("2001:db8::1", 32, 64) == bytes.fromhex("20010db800000000")
    assert client_block("not an address") == b""
