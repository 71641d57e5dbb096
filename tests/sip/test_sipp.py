"""The edge on real sockets, driven by sipp over loopback, UDP and TCP.

Each module run starts one edge (UDP and TCP listeners on free ports) whose tenant ``acme``
sends calls to a sipp UAS on another free port; sipp's regex checks (``check_it``) fail the
call, and so the test, when a header is not what the edge must send.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from xml.sax.saxutils import escape

import pytest

from sipzone.model.snapshot import SnapshotHolder
from sipzone.sip import SipConfig
from tests.sip.conftest import (
    IDN_NAME,
    EdgeThread,
    Sipp,
    answer,
    free_port,
    make_snapshot,
    needs_sipp,
)
from tests.sip.conftest import scenario as xml_scenario

pytestmark = needs_sipp
TRANSPORTS = ["udp", "tcp"]
CALLEE = (
    "[last_Record-Route:]",
    "Contact: <sip:callee@[local_ip]:[local_port];transport=[transport]>",
)
CALLEE_TAG = "[pid]SIPpTag01[call_number]"


@pytest.fixture(scope="module")
def uas_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def edge(uas_port: int) -> Iterator[EdgeThread]:
    holder = SnapshotHolder(make_snapshot(upstream=f"sip:127.0.0.1:{uas_port}"))
    config = SipConfig(listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0"), tcp_idle_timeout=30)
    thread = EdgeThread(holder, config).start()
    yield thread
    thread.stop()


def target(edge: EdgeThread, transport: str) -> str:
    return f"127.0.0.1:{edge.port(transport)}"


def options_scenario(
    domain: str, status: int, contact_regex: str | None = None, mf: int = 70
) -> str:
    check = ""
    if contact_regex:
        check = (
            f'<action><ereg regexp="{escape(contact_regex)}" search_in="hdr" '
            'header="Contact:" check_it="true" assign_to="contact"/></action>'
        )
    return xml_scenario(
        "options",
        f"""
  <send><![CDATA[
OPTIONS sip:ping@{domain} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: {mf}
To: <sip:ping@{domain}>
From: <sip:probe@[local_ip]:[local_port]>;tag=[call_number]
Call-ID: [call_id]
CSeq: 1 OPTIONS
Contact: <sip:probe@[local_ip]:[local_port];transport=[transport]>
Content-Length: 0

]]></send>
  <recv response="{status}">{check}</recv>
  {'<Reference variables="contact"/>' if contact_regex else ""}
""",
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("domain", "fqdn"),
    [
        ("voip.example.com", "voip.example.com"),  # exact
        ("cust7.teams.example.com", "cust7.teams.example.com"),  # wildcard, one label
        ("a.b.teams.example.com", "a.b.teams.example.com"),  # wildcard, two labels
        ("Cust7.TEAMS.Example.com", "cust7.teams.example.com"),  # mixed case
        (IDN_NAME, IDN_NAME),  # IDN, as the A-label a SIP URI carries
    ],
)
def test_options_to_admitted_names(
    sipp: Sipp, edge: EdgeThread, transport: str, domain: str, fqdn: str
) -> None:
    contact = rf"<sip:{re.escape(fqdn)}:{edge.port(transport)};transport={transport}>"
    result = sipp.run(options_scenario(domain, 200, contact), target(edge, transport), transport)
    assert result.ok, result.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_options_to_unknown_domain_gets_403(sipp: Sipp, edge: EdgeThread, transport: str) -> None:
    result = sipp.run(
        options_scenario("nobody.example.net", 403), target(edge, transport), transport
    )
    assert result.ok, result.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_forwards_zero_gets_483(sipp: Sipp, edge: EdgeThread, transport: str) -> None:
    xml = options_scenario("voip.example.com", 483, mf=0)
    result = sipp.run(xml, target(edge, transport), transport)
    assert result.ok, result.output


SDP = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

UAC_CALL = f"""
  <send retrans="500"><![CDATA[
INVITE sip:+4930123@cust42.teams.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:+4930123@cust42.teams.example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{SDP}]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action><ereg regexp="sip:cust42\\.teams\\.example\\.com:[0-9]+;transport=(udp|tcp);lr"
      search_in="hdr" header="Record-Route:" check_it="true" assign_to="rr"/></action>
  </recv>
  <Reference variables="rr"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:+4930123@cust42.teams.example.com>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="100"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:+4930123@cust42.teams.example.com>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"""

# What a caller's INVITE carries to the core (a regex over the message, as sipp reads it): our
# entry facing the core (an address and a flow token), then our entry facing the caller.
RECORD_ROUTE = (
    r"Record-Route: &lt;sip:szf1\.[-_A-Za-z0-9]+@127\.0\.0\.1:[0-9]+;transport=udp;lr&gt;"
    r"[[:space:]]+"
    r"Record-Route: &lt;sip:cust42\.teams\.example\.com:[0-9]+;transport=(udp|tcp);lr&gt;"
)

UAS_CALL = (
    """
  <recv request="INVITE">
    <action>
      <ereg regexp=\""""
    + RECORD_ROUTE
    + """\" search_in="msg" check_it="true" assign_to="rr"/>
      <ereg regexp="^ *acme$" search_in="hdr" header="X-Sipzone-Tenant:" check_it="true"
        assign_to="tenant"/>
      <ereg regexp="^ *69$" search_in="hdr" header="Max-Forwards:" check_it="true"
        assign_to="mf"/>
      <ereg regexp="branch=z9hG4bKsz" search_in="hdr" header="Via:" check_it="true"
        assign_to="via"/>
    </action>
  </recv>
  <Reference variables="rr,tenant,mf,via"/>"""
    + answer("100 Trying")
    + answer("180 Ringing", *CALLEE, tag=CALLEE_TAG)
    + answer(
        "200 OK", *CALLEE, "Content-Type: application/sdp", tag=CALLEE_TAG, retrans=True, body=SDP
    )
    + """
  <recv request="ACK" crlf="true"/>
  <recv request="BYE">
    <action><ereg regexp="^ *acme$" search_in="hdr" header="X-Sipzone-Tenant:"
      check_it="true" assign_to="t2"/></action>
  </recv>
  <Reference variables="t2"/>"""
    + answer("200 OK")
    + "\n"
)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_through_the_edge_to_a_uas_upstream(
    sipp: Sipp, edge: EdgeThread, uas_port: int, transport: str
) -> None:
    # The core is on UDP; the caller uses ``transport`` towards the edge.
    uas = sipp.serve(xml_scenario("uas", UAS_CALL), uas_port, "udp")
    time.sleep(0.3)  # let the UAS bind before the INVITE leaves
    caller = sipp.run(xml_scenario("uac", UAC_CALL), target(edge, transport), transport)
    callee = sipp.wait(uas)
    assert caller.ok, caller.output
    assert callee.ok, callee.output


UAC_REGISTER = """
  <send retrans="500"><![CDATA[
REGISTER sip:cust42.teams.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:alice@cust42.teams.example.com>;tag=[call_number]
To: <sip:alice@cust42.teams.example.com>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:alice@[local_ip]:[local_port];transport=[transport]>
Expires: 300
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
"""

UAS_REGISTER = (
    """
  <recv request="REGISTER">
    <action><ereg regexp="^ *acme$" search_in="hdr" header="X-Sipzone-Tenant:"
      check_it="true" assign_to="tenant"/></action>
  </recv>
  <Reference variables="tenant"/>"""
    + answer("200 OK", "[last_Contact:]", tag="reg[call_number]")
    + "\n"
)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_is_forwarded(sipp: Sipp, edge: EdgeThread, uas_port: int, transport: str) -> None:
    uas = sipp.serve(xml_scenario("registrar", UAS_REGISTER), uas_port, "udp")
    time.sleep(0.3)
    client = sipp.run(xml_scenario("register", UAC_REGISTER), target(edge, transport), transport)
    registrar = sipp.wait(uas)
    assert client.ok, client.output
    assert registrar.ok, registrar.output


# -- malformed input --------------------------------------------------------------------------


def _msg(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + body


def malformed_corpus(port: int) -> list[tuple[str, bytes]]:
    via = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-bad"
    good = (
        "OPTIONS sip:ping@voip.example.com SIP/2.0\n"
        f"{via}\nMax-Forwards: 70\nTo: <sip:ping@voip.example.com>\n"
        "From: <sip:p@127.0.0.1>;tag=1\nCall-ID: bad-1\nCSeq: 1 OPTIONS\n"
    )
    return [
        ("truncated", _msg(good[: len(good) // 2])),
        ("truncated body", _msg(good + "Content-Length: 50\n\n", b"v=0\r\n")),
        ("bad content-length", _msg(good + "Content-Length: abc\n\n")),
        ("negative content-length", _msg(good + "Content-Length: -5\n\n")),
        ("binary garbage", bytes(range(256)) * 8),
        ("nul bytes", b"\x00" * 1000),
        ("huge header", _msg(good + "X-Big: " + "a" * 70000 + "\nContent-Length: 0\n\n")),
        ("many headers", _msg(good + "X-H: 1\n" * 300 + "Content-Length: 0\n\n")),
        ("no colon", _msg(good + "this is not a header\nContent-Length: 0\n\n")),
        ("bad cseq", _msg(good.replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS") + "\n")),
        ("only a start line", b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"),
        ("empty", b""),
    ]


def recv_all(sock: socket.socket, wait: float) -> list[bytes]:
    sock.settimeout(wait)
    out = []
    try:
        while True:
            data = sock.recv(70000)
            if not data:
                break  # the peer closed the stream
            out.append(data)
    except (TimeoutError, BlockingIOError):
        pass
    return out


def keepalive(port: int, edge_port: int, call: str) -> bytes:
    return _msg(
        "OPTIONS sip:ping@voip.example.com SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call}\nMax-Forwards: 70\n"
        "To: <sip:ping@voip.example.com>\nFrom: <sip:p@127.0.0.1>;tag=1\n"
        f"Call-ID: {call}\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"
    )


def test_malformed_datagrams_get_400_or_silence_and_the_edge_still_answers(
    edge: EdgeThread,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        dest = ("127.0.0.1", edge.port("udp"))
        corpus = malformed_corpus(port)
        for _, data in corpus:
            if len(data) <= 65000:
                sock.sendto(data, dest)
        replies = recv_all(sock, 1.0)
        for reply in replies:
            status = int(reply.split(b" ", 2)[1])
            assert status in (400, 513), reply[:200]
        assert any(b"Content-Length" in r.split(b"\r\n", 1)[0] for r in replies)
        sock.sendto(keepalive(port, edge.port("udp"), "after-junk"), dest)
        after = recv_all(sock, 5.0)
        assert after and after[0].startswith(b"SIP/2.0 200 OK"), after


def test_malformed_streams_are_answered_or_closed_and_the_edge_still_answers(
    edge: EdgeThread,
) -> None:
    for name, data in malformed_corpus(5999):
        if not data:
            continue
        with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            received = b"".join(recv_all(conn, 2.0))
            if received:
                assert received.startswith((b"SIP/2.0 400", b"SIP/2.0 513")), (name, received[:200])
    with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
        ping = keepalive(5999, 0, "tcp-after").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        conn.sendall(b"\r\n\r\n" + ping[: len(ping) // 2])
        time.sleep(0.1)  # the second half in a separate segment: framing must wait for it
        conn.sendall(ping[len(ping) // 2 :])
        received = b"".join(recv_all(conn, 3.0))
    assert received.startswith(b"\r\nSIP/2.0 200 OK"), received[:200]


# -- issue 7: forged responses go nowhere, genuine calls still work ----------------------------


def forged_ok(edge_port: int, transport: str, sink_port: int, body: bytes) -> bytes:
    """The issue's repro: our address and a z9hG4bKsz branch on top, a sink below."""
    return (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKszdead\r\n"
        b"Via: SIP/2.0/%s 127.0.0.1:%d;branch=z9hG4bKv\r\n"
        b"From: <sip:a@b.example>;tag=1\r\nTo: <sip:c@voip.example.com>;tag=2\r\n"
        b"Call-ID: forged\r\nCSeq: 1 INVITE\r\nContent-Length: %d\r\n\r\n%s"
    ) % (edge_port, transport.upper().encode(), sink_port, len(body), body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_forged_responses_reach_no_sink_while_a_call_goes_through(
    sipp: Sipp, edge: EdgeThread, uas_port: int, transport: str
) -> None:
    body = b"GET /internal/admin HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp_sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_sink,
    ):
        tcp_sink.bind(("127.0.0.1", 0))
        tcp_sink.listen(8)
        udp_sink.bind(("127.0.0.1", 0))
        sinks = {"tcp": tcp_sink.getsockname()[1], "udp": udp_sink.getsockname()[1]}
        forged = [forged_ok(edge.port("udp"), t, port, body) for t, port in sinks.items()]
        forged += [f.replace(b"UDP 127.0.0.1", b"TCP 127.0.0.1", 1) for f in forged]
        if transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
                for data in forged * 5:
                    attacker.sendto(data, ("127.0.0.1", edge.port("udp")))
        else:
            with socket.create_connection(("127.0.0.1", edge.port("tcp")), timeout=5) as conn:
                conn.sendall(b"".join(forged * 5))
        # A genuine call through the same edge meanwhile: its responses are relayed.
        uas = sipp.serve(xml_scenario("uas", UAS_CALL), uas_port, "udp")
        time.sleep(0.3)
        caller = sipp.run(xml_scenario("uac", UAC_CALL), target(edge, transport), transport)
        callee = sipp.wait(uas)
        assert caller.ok, caller.output
        assert callee.ok, callee.output
        tcp_sink.settimeout(0.5)
        with pytest.raises(TimeoutError):
            tcp_sink.accept()
        udp_sink.settimeout(0.5)
        with pytest.raises(TimeoutError):
            udp_sink.recv(65535)


# -- issue 8: a Route to a host no configuration names is not followed --------------------------


def foreign_route_scenario(route: str) -> str:
    return xml_scenario(
        "foreign-route",
        f"""
  <send><![CDATA[
INVITE sip:+4930123@cust42.teams.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@cust42.teams.example.com>;tag=[call_number]
To: <sip:+4930123@cust42.teams.example.com>
Route: {route}
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="403">
    <action><ereg regexp="Route Not Allowed" search_in="msg" check_it="true"
      assign_to="why"/></action>
  </recv>
  <Reference variables="why"/>
""",
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("ours_first", [False, True])
def test_a_foreign_route_from_outside_reaches_no_sink(
    sipp: Sipp, edge: EdgeThread, transport: str, ours_first: bool
) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp_sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_sink,
    ):
        port = free_port()
        tcp_sink.bind(("127.0.0.1", port))
        tcp_sink.listen(8)
        udp_sink.bind(("127.0.0.1", port))
        route = f"<sip:127.0.0.1:{port};transport={transport};lr>"
        if ours_first:
            route = f"<sip:cust42.teams.example.com:{edge.port(transport)};lr>, {route}"
        result = sipp.run(foreign_route_scenario(route), target(edge, transport), transport)
        assert result.ok, result.output
        tcp_sink.settimeout(0.5)
        with pytest.raises(TimeoutError):
            tcp_sink.accept()
        udp_sink.settimeout(0.5)
        with pytest.raises(TimeoutError):
            udp_sink.recv(65535)
