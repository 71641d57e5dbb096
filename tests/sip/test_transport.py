"""Sockets: IPv6, TCP idle timeout and connection cap, a TCP upstream, SO_REUSEPORT."""

from __future__ import annotations

import socket

import pytest

from sipzone.model.snapshot import SnapshotHolder
from sipzone.sip import SipConfig
from sipzone.sip.transport import parse_listen
from tests.sip.conftest import EdgeThread, make_snapshot


def options(via: str, call: str = "t1", domain: str = "voip.example.com") -> bytes:
    return (
        f"OPTIONS sip:ping@{domain} SIP/2.0\r\nVia: {via};branch=z9hG4bK-{call}\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:ping@{domain}>\r\nFrom: <sip:p@example.net>;tag=1\r\n"
        f"Call-ID: {call}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def read_message(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65535)
        if not chunk:
            break
        data += chunk
    return data


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_parse_listen() -> None:
    assert parse_listen("udp:127.0.0.1:5070") == ("udp", "127.0.0.1", 5070)
    assert parse_listen("TCP:[::1]:5071") == ("tcp", "::1", 5071)
    for bad in ("tls:127.0.0.1:5061", "udp:127.0.0.1", "udp::99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_udp_and_tcp(edge_factory: type[EdgeThread]) -> None:
    edge = edge_factory(
        SnapshotHolder(make_snapshot()), SipConfig(listen=("udp:[::1]:0", "tcp:[::1]:0"))
    ).start()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sock.sendto(options(f"SIP/2.0/UDP [::1]:{port}"), ("::1", edge.port("udp")))
        reply = sock.recv(65535)
    assert reply.startswith(b"SIP/2.0 200 OK")
    assert f"Contact: <sip:voip.example.com:{edge.port('udp')};transport=udp>".encode() in reply
    with socket.create_connection(("::1", edge.port("tcp")), timeout=5) as conn:
        conn.sendall(options("SIP/2.0/TCP [::1]:5060"))
        reply = read_message(conn)
    assert reply.startswith(b"SIP/2.0 200 OK")
    assert b"transport=tcp>" in reply


def test_idle_tcp_connections_are_closed(edge_factory: type[EdgeThread]) -> None:
    config = SipConfig(listen=("tcp:127.0.0.1:0",), tcp_idle_timeout=0.2)
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=10) as conn:
        conn.sendall(options("SIP/2.0/TCP 127.0.0.1:5060"))
        assert read_message(conn).startswith(b"SIP/2.0 200 OK")
        assert conn.recv(100) == b""  # closed by the edge once idle (recv would time out)


def test_connection_cap(edge_factory: type[EdgeThread]) -> None:
    config = SipConfig(listen=("tcp:127.0.0.1:0",), tcp_max_connections=2)
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    address = ("127.0.0.1", edge.port("tcp"))
    kept = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        for i, conn in enumerate(kept):
            conn.sendall(options("SIP/2.0/TCP 127.0.0.1:5060", f"cap{i}"))
            assert read_message(conn).startswith(b"SIP/2.0 200 OK")
        with socket.create_connection(address, timeout=5) as extra:
            try:
                extra.sendall(options("SIP/2.0/TCP 127.0.0.1:5060", "cap-extra"))
                refused = read_message(extra)
            except ConnectionResetError:
                refused = b""
            assert refused == b""
    finally:
        for conn in kept:
            conn.close()


def test_forwarding_to_a_tcp_upstream_and_relaying_back_over_udp(
    edge_factory: type[EdgeThread],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as core:
        core.bind(("127.0.0.1", 0))
        core.listen(1)
        core.settimeout(5)
        upstream = f"sip:127.0.0.1:{core.getsockname()[1]};transport=tcp"
        config = SipConfig(listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0"))
        edge = edge_factory(SnapshotHolder(make_snapshot(upstream=upstream)), config).start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.0.1", 0))
            phone.settimeout(5)
            port = phone.getsockname()[1]
            invite = options(f"SIP/2.0/UDP 127.0.0.1:{port}", "tcpup", "x.teams.example.com")
            invite = invite.replace(b"OPTIONS", b"INVITE")
            phone.sendto(invite, ("127.0.0.1", edge.port("udp")))
            conn, _ = core.accept()
            with conn:
                conn.settimeout(5)
                received = read_message(conn)
                assert received.startswith(b"INVITE sip:ping@x.teams.example.com SIP/2.0\r\n")
                head = received.split(b"\r\n\r\n")[0].split(b"\r\n")
                via = [line for line in head if line.startswith(b"Via: ")]
                assert via[0].startswith(b"Via: SIP/2.0/TCP 127.0.0.1:")
                assert b"X-Sipzone-Tenant: acme" in head
                ringing = [b"SIP/2.0 180 Ringing", *via]
                ringing += [
                    line for line in head if line.split(b":")[0] in (b"From", b"Call-ID", b"CSeq")
                ]
                ringing += [
                    b"To: <sip:ping@x.teams.example.com>;tag=core",
                    b"Content-Length: 0",
                    b"",
                    b"",
                ]
                conn.sendall(b"\r\n".join(ringing))
                relayed = phone.recv(65535)
    assert relayed.startswith(b"SIP/2.0 180 Ringing\r\n")
    assert relayed.count(b"Via: ") == 1
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-tcpup".encode() in relayed


def test_two_services_share_a_port_with_so_reuseport(edge_factory: type[EdgeThread]) -> None:
    first = edge_factory(
        SnapshotHolder(make_snapshot()), SipConfig(listen=("udp:127.0.0.1:0",))
    ).start()
    port = first.port("udp")
    second = edge_factory(
        SnapshotHolder(make_snapshot()), SipConfig(listen=(f"udp:127.0.0.1:{port}",))
    ).start()
    assert second.port("udp") == port
