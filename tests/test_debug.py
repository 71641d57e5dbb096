"""Debug switches (issue 13): `sipzone debug sip|dns` turns on per-message lines for one peer or
name on a running node, through the store; they stop when switched off or when time is up."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import dns.message
import dns.query
import pytest

from tests.conftest import Cli, Server, free_port
from tests.test_runtime import logged, one_site_store, wait_for

pytestmark = pytest.mark.integration

Serve = Callable[..., Server]


def send(
    port: int, source: str, call_id: str, method: str = "OPTIONS", tcp: bool = False
) -> int | None:
    """Send one request for voip.example.com from ``source`` (a loopback address), over UDP
    or TCP; the status of its first answer (None: none came)."""
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as ua:
        ua.bind((source, 0))
        ua.settimeout(2)
        ua.connect(("127.0.0.1", port))
        me = ua.getsockname()[1]
        body = "v=0\r\n" if method == "INVITE" else ""
        transport = "TCP" if tcp else "UDP"
        ua.sendall(
            (
                f"{method} sip:alice@voip.example.com SIP/2.0\r\n"
                f"Via: SIP/2.0/{transport} {source}:{me};branch=z9hG4bK-{call_id}\r\n"
                "Max-Forwards: 70\r\n"
                "To: <sip:alice@voip.example.com>\r\n"
                "From: <sip:bob@voip.example.com>;tag=1\r\n"
                f"Call-ID: {call_id}\r\n"
                f"CSeq: 1 {method}\r\n"
                f"Contact: <sip:bob@{source}:{me}>\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        try:
            return int(ua.recv(4096).split(b" ", 2)[1])
        except TimeoutError:
            return None


def ask(port: int, name: str) -> None:
    dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)


def traced(server: Server, text: str) -> list[str]:
    """The server's debug lines holding ``text``."""
    return [line for line in logged(server, r"DEBUG sipzone\.debug") if text in line]


@pytest.fixture
def node(serve: Serve, sqlite_url: str) -> tuple[Server, int, int]:
    one_site_store(sqlite_url, "voip.example.com", "cust42.example.com", "other.example.com")
    sip, dns_port = free_port(), free_port()
    listen = f"udp:127.0.0.1:{sip},tcp:127.0.0.1:{sip}"
    server = serve("--sip", listen, "--dns", f"127.0.0.1:{dns_port}")
    return server, sip, dns_port


def test_sip_switch_logs_one_peer_only_until_switched_off(
    cli: Cli, node: tuple[Server, int, int]
) -> None:
    server, sip, dns_port = node
    assert not logged(server, "DEBUG")  # the level is info: no debug line without a switch
    cli("debug", "sip", "--peer", "127.0.0.2", check=True)
    # The node takes the switch with the next snapshot; the peer's OPTIONS show when it has.
    wait_for(lambda: send(sip, "127.0.0.2", "wait-opt") and traced(server, "Call-ID wait-opt"))
    assert send(sip, "127.0.0.3", "other-peer") is not None
    assert send(sip, "127.0.0.2", "peer-invite", "INVITE") is not None
    wait_for(lambda: traced(server, "INVITE sip:alice@voip.example.com SIP/2.0 (Call-ID peer"))
    assert "in udp from 127.0.0.2:" in traced(server, "INVITE sip:alice")[0]
    out = [line for line in traced(server, "peer-invite") if "out udp to 127.0.0.2:" in line]
    assert out and "SIP/2.0 503 " in out[0], "the answer to the peer is logged too"
    assert send(sip, "127.0.0.2", "over-tcp", tcp=True) is not None  # the stream reader's hook
    wait_for(lambda: traced(server, "(Call-ID over-tcp)"))
    assert "in tcp from 127.0.0.2:" in traced(server, "over-tcp")[0]
    assert not [line for line in server.lines if "other-peer" in line]

    # Off, then a DNS switch as a marker: once the DNS line shows, the node runs the
    # snapshot without the SIP switch, and a message the edge answered before the marker's
    # query is not logged.
    cli("debug", "off", "sip", check=True)
    cli("debug", "dns", "--name", "cust42.example.com", check=True)
    wait_for(lambda: ask(dns_port, "cust42.example.com") or traced(server, "cust42.example.com"))
    assert send(sip, "127.0.0.2", "after-off") is not None
    ask(dns_port, "x.cust42.example.com")
    wait_for(lambda: traced(server, "from 127.0.0.1: x.cust42.example.com. A"))
    assert not [line for line in server.lines if "after-off" in line]


def test_sip_switch_ends_by_itself(cli: Cli, node: tuple[Server, int, int]) -> None:
    server, sip, _ = node
    cli("debug", "sip", "--name", "voip.example.com", "--for", "3s", check=True)
    wait_for(lambda: send(sip, "127.0.0.1", "early") and traced(server, "Call-ID early"))
    time.sleep(3)  # past the switch's end: the next message ends it on this node
    assert send(sip, "127.0.0.1", "late") is not None
    wait_for(lambda: logged(server, r"INFO sipzone\[\d+\] debug switch ended: sip name voip"))
    assert send(sip, "127.0.0.1", "later") is not None
    assert not [line for line in server.lines if "late" in line and "DEBUG" in line]


def test_dns_switch_logs_one_name_and_whole_messages(
    cli: Cli, node: tuple[Server, int, int]
) -> None:
    server, _, dns_port = node
    cli("debug", "dns", "--name", "cust42.example.com", "--full", check=True)
    wait_for(lambda: ask(dns_port, "cust42.example.com") or traced(server, "cust42.example.com"))
    ask(dns_port, "other.example.com")
    ask(dns_port, "_sip._udp.cust42.example.com")  # a name under the switch's name
    wait_for(lambda: traced(server, "to 127.0.0.1: _sip._udp.cust42.example.com. A: "))
    answer = traced(server, "to 127.0.0.1: cust42.example.com. A: NOERROR, 1 answer record(s)")
    assert answer and "IN A 192.0.2.10" in answer[-1], "the whole answer follows its summary"
    assert not traced(server, "other.example.com")
