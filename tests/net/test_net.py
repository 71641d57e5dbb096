"""The shared networking pieces: host:port parsing, bound sockets, batched UDP."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from sipzone.net import batched_udp, split_hostport
from sipzone.net.sockets import bound_socket


def test_split_hostport() -> None:
    assert split_hostport("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert split_hostport("[::1]:53") == ("::1", 53)
    assert split_hostport("ns.example.com:53") == ("ns.example.com", 53)
    assert split_hostport("[::1]:0", allow_zero=True) == ("::1", 0)
    for bad in ("127.0.0.1", ":53", "[]:53", "host:", "host:x", "host:65536", "host:0", "[::1:53"):
        with pytest.raises(ValueError):
            split_hostport(bad)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_bound_sockets_share_a_port(host: str) -> None:
    first = bound_socket(host, 0, socket.SOCK_DGRAM)
    port = first.getsockname()[1]
    second = bound_socket(host, port, socket.SOCK_DGRAM)
    stream = bound_socket(host, port, socket.SOCK_STREAM, backlog=8)
    try:
        assert second.getsockname()[1] == port
        assert not first.getblocking()
        assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        for sock in (first, second, stream):
            sock.close()


def test_a_failed_bind_closes_its_socket() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEADDR: exclusive
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            bound_socket("127.0.0.1", taken.getsockname()[1], socket.SOCK_DGRAM, reuse_port=False)
    finally:
        taken.close()


needs_batching = pytest.mark.skipif(not batched_udp.available(), reason="no recvmmsg here")


def _exchange(
    host: str,
    ports: bool,
    datagrams: list[bytes],
    elsewhere: bool = False,
    answers: bool = False,
) -> tuple[list[bytes], list[object], list[bytes]]:
    """Send ``datagrams`` to a BatchedUdp echo server; what came back, what the callback saw,
    and (with ``elsewhere``) what it sent to a second socket by ``sendto``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    seen: list[object] = []
    client = socket.socket(family, socket.SOCK_DGRAM)
    other = socket.socket(family, socket.SOCK_DGRAM)
    client.bind((host, 0))
    other.bind((host, 0))
    client.settimeout(2)
    other.settimeout(2)

    async def run() -> tuple[list[bytes], list[bytes]]:
        sock = bound_socket(host, 0, socket.SOCK_DGRAM)
        server: batched_udp.BatchedUdp

        def respond(data: bytes, source: object) -> bytes | None:
            seen.append(source)
            if data == b"silence":
                return None
            if elsewhere:
                server.sendto(b"to-other:" + data, other.getsockname()[:2])
                # Forwards and answers share a batch's sendmmsg: both arrive, in order.
                return b"echo:" + data if data.startswith(b"both") else None
            return b"echo:" + data

        server = batched_udp.BatchedUdp(sock, respond, 512, ports=ports)
        server.start(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        try:
            for data in datagrams:
                client.sendto(data, sock.getsockname()[:2])
            got, got_other = [], []
            want = len([d for d in datagrams if d != b"silence" and len(d) < batched_udp.RECV_SIZE])
            for _ in range(want):
                if elsewhere:
                    got_other.append(await loop.run_in_executor(None, other.recv, 2048))
                if not elsewhere or answers:
                    got.append(await loop.run_in_executor(None, client.recv, 2048))
            return got, got_other
        finally:
            server.close()

    try:
        got, got_other = uvloop.run(run())
    finally:
        source = client.getsockname()[:2]
        client.close()
        other.close()
    seen.append(source)
    return got, seen, got_other


@needs_batching
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_batched_udp_sees_host_and_port(host: str) -> None:
    got, seen, _ = _exchange(host, True, [b"a", b"silence", b"b"])
    assert got == [b"echo:a", b"echo:b"]  # an unanswered datagram shifts the batch, loses none
    *sources, client = seen
    assert sources == [client, client, client]
    assert isinstance(sources[0], tuple) and isinstance(sources[0][1], int)


@needs_batching
def test_batched_udp_packed_sources_for_dns() -> None:
    got, seen, _ = _exchange("127.0.0.1", False, [b"q"])
    assert got == [b"echo:q"]
    assert seen[0] == socket.inet_pton(socket.AF_INET, "127.0.0.1")


@needs_batching
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_batched_udp_answers_elsewhere_by_sendto(host: str) -> None:
    _, _, other = _exchange(host, True, [b"x", b"y"], elsewhere=True)
    assert sorted(other) == [b"to-other:x", b"to-other:y"]


@needs_batching
def test_batched_udp_forwards_and_answers_in_one_batch() -> None:
    """More datagrams than a batch has slots, each forwarded and answered: every one of both
    arrives, each side in the order the datagrams came (the slots run over into a new send)."""
    datagrams = [b"both%d" % i for i in range(batched_udp.BATCH + 10)]
    got, _, other = _exchange("127.0.0.1", True, datagrams, elsewhere=True, answers=True)
    assert got == [b"echo:" + d for d in datagrams]
    assert other == [b"to-other:" + d for d in datagrams]


@needs_batching
def test_batched_udp_drops_what_it_cannot_read_whole() -> None:
    host = "127.0.0.1"
    got, seen, _ = _exchange(host, True, [b"z" * (batched_udp.RECV_SIZE + 10), b"small"])
    assert got == [b"echo:small"]
    assert len(seen) == 2  # the callback never saw the oversized one
