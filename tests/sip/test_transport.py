"""Sockets: IPv6, TCP deadlines and connection caps, a TCP upstream, SO_REUSEPORT, what the
transport looks up (configured upstream names only) and logs (never a flood)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time

import pytest

from sipzone.model.snapshot import SnapshotHolder
from sipzone.net.limits import connection_cap
from sipzone.sip import BRANCH_SECRET, SipConfig, check_tenant_headers, parse_listen
from sipzone.sip.locate import Location, Locator
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
    assert parse_listen("tls:[::1]:5061") == ("tls", "::1", 5061)
    for bad in ("sctp:127.0.0.1:5061", "udp:127.0.0.1", "udp::99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_tenant_header_names_must_be_headers_of_their_own() -> None:
    check_tenant_headers("X-Sipzone-Tenant", "X-Sipzone-Caller-Tenant")
    check_tenant_headers("X-Callee", "X-Caller")
    for bad in (("X Tenant", "X-Caller"), ("Via", "X-Caller"), ("x-a", "X-A"), ("t", "X-B"),
                ("X-Tenant", "X-Ä"), ("Route", "Path")):  # fmt: skip
        with pytest.raises(ValueError):
            check_tenant_headers(*bad)


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


# -- issue 7: slow clients, caps, names, log floods -------------------------------------------


def closed_after(conn: socket.socket, dribble: bytes, every: float, limit: float) -> float:
    """Send ``dribble`` one byte per ``every`` seconds until the edge closes the connection;
    the seconds that took (fails past ``limit``)."""
    start = time.monotonic()
    conn.settimeout(every)
    for n in range(len(dribble)):
        assert time.monotonic() - start < limit, "the edge kept a dribbling client"
        try:
            conn.sendall(dribble[n : n + 1])
            if conn.recv(100) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
    raise AssertionError("ran out of bytes before the edge closed the connection")


def test_a_client_dribbling_its_headers_is_closed_at_the_header_deadline(
    edge_factory: type[EdgeThread],
) -> None:
    config = SipConfig(
        listen=("tcp:127.0.0.1:0",),
        tcp_idle_timeout=30,
        tcp_header_timeout=0.6,
        tcp_message_timeout=10,
    )
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
        took = closed_after(conn, options("SIP/2.0/TCP 127.0.0.1:5060") * 2, 0.1, 5.0)
    assert 0.5 <= took < 2.0, took  # each byte reset the idle timer; the deadline did not move


def test_a_client_dribbling_its_body_is_closed_at_the_message_deadline(
    edge_factory: type[EdgeThread],
) -> None:
    config = SipConfig(
        listen=("tcp:127.0.0.1:0",),
        tcp_idle_timeout=30,
        tcp_header_timeout=0.3,
        tcp_message_timeout=1.0,
    )
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    head = options("SIP/2.0/TCP 127.0.0.1:5060").replace(
        b"Content-Length: 0", b"Content-Length: 500"
    )
    with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
        conn.sendall(head)  # the headers arrive at once: the header deadline is met
        took = closed_after(conn, b"x" * 500, 0.1, 5.0)
    assert 0.6 <= took < 3.0, took


def test_slow_but_whole_messages_and_crlf_pings_keep_a_connection(
    edge_factory: type[EdgeThread],
) -> None:
    config = SipConfig(
        listen=("tcp:127.0.0.1:0",),
        tcp_idle_timeout=30,
        tcp_header_timeout=0.3,
        tcp_message_timeout=0.6,
    )
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
        for n in range(4):  # 1.6 s in all, far past both deadlines, one message at a time
            conn.sendall(options("SIP/2.0/TCP 127.0.0.1:5060", f"slow{n}"))
            assert read_message(conn).startswith(b"SIP/2.0 200 OK"), n
            time.sleep(0.2)
            conn.sendall(b"\r\n\r\n")  # an RFC 5626 ping is no message: no deadline runs
            assert conn.recv(10) == b"\r\n"
            time.sleep(0.2)


def test_connections_beyond_the_per_source_cap_are_closed_at_once(
    edge_factory: type[EdgeThread],
) -> None:
    config = SipConfig(listen=("tcp:127.0.0.1:0",), tcp_max_per_source=2)
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    assert edge.service is not None
    assert edge.service.max_connections == connection_cap()  # None: the open-file share
    address = ("127.0.0.1", edge.port("tcp"))
    kept = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        for i, conn in enumerate(kept):
            conn.sendall(options("SIP/2.0/TCP 127.0.0.1:5060", f"src{i}"))
            assert read_message(conn).startswith(b"SIP/2.0 200 OK")
        for _ in range(3):
            with socket.create_connection(address, timeout=5) as extra:
                start = time.monotonic()
                try:
                    closed = extra.recv(100) == b""
                except ConnectionResetError:
                    closed = True
                assert closed and time.monotonic() - start < 1.0
        kept.pop().close()  # a slot comes free
        time.sleep(0.2)
        with socket.create_connection(address, timeout=5) as again:
            again.sendall(options("SIP/2.0/TCP 127.0.0.1:5060", "again"))
            assert read_message(again).startswith(b"SIP/2.0 200 OK")
    finally:
        for conn in kept:
            conn.close()


def test_an_asked_connection_cap_never_exceeds_the_open_file_share(
    edge_factory: type[EdgeThread],
) -> None:
    config = SipConfig(listen=("tcp:127.0.0.1:0",), tcp_max_connections=10**9)
    edge = edge_factory(SnapshotHolder(make_snapshot()), config).start()
    assert edge.service is not None
    assert edge.service.max_connections == connection_cap() < 10**9


def test_names_are_looked_up_for_configured_upstreams_only(
    edge_factory: type[EdgeThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 7 item 2: no lookup for a peer's Via or Route; the configured upstream name is
    resolved in the background and alone says who the core is."""
    looked_up: list[str] = []
    real = Locator.locate

    async def recording(self: Locator, uri: str) -> Location:
        looked_up.append(uri)
        return await real(self, uri)

    monkeypatch.setattr(Locator, "locate", recording)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as core,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
    ):
        for s in (core, attacker, sink):
            s.bind(("127.0.0.1", 0))
            s.settimeout(1.0)
        core_port, attacker_port = core.getsockname()[1], attacker.getsockname()[1]
        sink_port = sink.getsockname()[1]
        snapshot = make_snapshot(upstream=f"sip:localhost:{core_port}")
        config = SipConfig(listen=("udp:127.0.0.1:0",))
        edge = edge_factory(SnapshotHolder(snapshot), config).start()
        dest = ("127.0.0.1", edge.port("udp"))
        assert looked_up == [f"sip:localhost:{core_port}"]
        # The configured name works: an INVITE reaches the core at its resolved address.
        invite = options(f"SIP/2.0/UDP 127.0.0.1:{attacker_port}", "up", "x.teams.example.com")
        attacker.sendto(invite.replace(b"OPTIONS", b"INVITE"), dest)
        assert core.recv(65535).startswith(b"INVITE sip:ping@x.teams.example.com")
        # The repro: a forged response whose next Via names the attacker by a name.
        forged = (
            f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{dest[1]};branch=z9hG4bKszdead\r\n"
            f"Via: SIP/2.0/UDP resolver-bait.example:{attacker_port};branch=z9hG4bKv\r\n"
            "From: <sip:a@b.example>;tag=1\r\nTo: <sip:c@d.example>;tag=2\r\n"
            "Call-ID: f\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        for _ in range(3):
            attacker.sendto(forged, dest)
            attacker.sendto(forged.replace(b"resolver-bait.example", b"localhost"), dest)
        # ... then asks to be relayed somewhere as if it were the core.
        bye = (
            f"BYE sip:victim@127.0.0.1:{sink_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP localhost:{attacker_port};branch=z9hG4bK-relay\r\n"
            "Max-Forwards: 70\r\nTo: <sip:victim@127.0.0.1>;tag=x\r\n"
            "From: <sip:a@evil.example>;tag=y\r\nCall-ID: relay\r\nCSeq: 2 BYE\r\n"
            f"Route: <sip:resolver-bait.example:{sink_port};lr>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        attacker.sendto(bye, dest)
        reply = attacker.recv(65535)
        assert reply.startswith(b"SIP/2.0 403"), reply[:100]  # a client's request, refused
        with pytest.raises(TimeoutError):
            sink.recv(65535)
        with pytest.raises(TimeoutError):
            attacker.recv(65535)  # nothing was relayed back to the attacker either
    assert looked_up == [f"sip:localhost:{core_port}"]


def test_a_flood_of_bad_via_ports_logs_one_line_and_no_traceback(
    edge_factory: type[EdgeThread], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 7 item 10: a Via port above 65535 logged a traceback per datagram."""
    snapshot = dataclasses.replace(make_snapshot(), settings={BRANCH_SECRET: "s" * 64})
    config = SipConfig(listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0"))
    edge = edge_factory(SnapshotHolder(snapshot), config).start()
    caplog.set_level(logging.DEBUG, logger="sipzone")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        for burst in range(20):  # in bursts our own receive buffer holds
            for n in range(10):
                data = options("SIP/2.0/UDP 127.0.0.1:99999", f"p{burst}-{n}")
                sock.sendto(data, ("127.0.0.1", edge.port("udp")))
            replies = [sock.recv(65535) for _ in range(10)]
            assert all(r.startswith(b"SIP/2.0 400") for r in replies)
    with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
        conn.sendall(options("SIP/2.0/TCP 127.0.0.1:70000") * 20)
        assert read_message(conn).startswith(b"SIP/2.0 400")
    records = [r for r in caplog.records if r.name.startswith("sipzone")]
    assert not [r for r in records if r.exc_info or "Traceback" in r.getMessage()]
    assert not [r for r in records if r.levelno >= logging.WARNING], records
