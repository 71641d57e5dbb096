"""The edge policy as a pure function: bytes and a snapshot in, Send values out."""

from __future__ import annotations

import re

import pytest

from sipzone.model.snapshot import Snapshot
from sipzone.sip import SipConfig
from sipzone.sip.choice import Choice
from sipzone.sip.edge import Edge
from sipzone.sip.message import Request, Response, parse_message
from sipzone.sip.signing import OUR_BRANCH
from sipzone.sip.values import Arrival, Listener, Send, Sends, Target
from tests.sip.conftest import IDN_NAME, fast_path, general_path, make_snapshot

SOURCE = ("192.0.2.7", 40000)


def request(
    method: str = "OPTIONS",
    uri: str = "sip:ping@voip.example.com",
    to: str | None = None,
    via: str = "SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-abc",
    extra: str = "",
    body: str = "",
    max_forwards: str | None = "70",
) -> bytes:
    to = to or f"<{uri}>"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        f"To: {to}",
        "From: <sip:probe@192.0.2.7>;tag=f1",
        "Call-ID: call-1@192.0.2.7",
        f"CSeq: 1 {method}",
        *([extra] if extra else []),
        f"Content-Length: {len(body.encode())}",
        "",
        body,
    ]
    return "\r\n".join(lines).encode()


def one(sends: Sends) -> tuple[Send, Request | Response]:
    assert len(sends) == 1, sends
    return sends[0], parse_message(sends[0].data)


def status_of(sends: Sends) -> int:
    _, message = one(sends)
    assert isinstance(message, Response)
    return message.status


@pytest.fixture
def edge(udp_listener: Listener) -> Edge:
    return Edge(SipConfig(), [udp_listener, Listener("tcp", "127.0.0.1", 5070)])


@pytest.mark.parametrize(
    ("uri", "fqdn"),
    [
        ("sip:ping@voip.example.com", "voip.example.com"),
        ("sip:ping@cust1.teams.example.com", "cust1.teams.example.com"),
        ("sip:ping@a.b.teams.example.com", "a.b.teams.example.com"),
        ("sip:ping@VoIP.Example.COM", "voip.example.com"),
        ("sips:ping@Cust1.TEAMS.example.com:5061;transport=tcp", "cust1.teams.example.com"),
        (f"sip:ping@{IDN_NAME}", IDN_NAME),
        ("sip:ping@bücher.example.com", IDN_NAME),
        ("sip:ping@voip.example.com.", "voip.example.com"),
    ],
)
def test_options_to_admitted_name_gets_200_with_fqdn_contact(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot, uri: str, fqdn: str
) -> None:
    send, reply = one(edge.receive(request(uri=uri), Arrival(udp_listener, SOURCE), snapshot))
    assert isinstance(reply, Response) and reply.status == 200
    assert reply.fields[b"Contact"] == f"<sip:{fqdn}:5070;transport=udp>".encode()
    for name in (b"Allow", b"Accept", b"Supported"):
        assert name in reply.fields
    assert b"OPTIONS" in reply.fields[b"Allow"]
    assert re.search(rb";tag=sz[0-9a-f]{8}$", reply.fields[b"To"])
    assert reply.fields[b"Call-ID"] == b"call-1@192.0.2.7"
    assert reply.fields[b"CSeq"] == b"1 OPTIONS"
    assert (send.host, send.port) == SOURCE


def test_options_to_ip_literal_uses_the_to_host(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(uri="sip:ping@192.0.2.1:5060", to="<sip:ping@x.teams.example.com>")
    _, reply = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert isinstance(reply, Response) and reply.status == 200
    assert reply.fields[b"Contact"].startswith(b"<sip:x.teams.example.com:")


def test_ipv6_literal_request_uri_uses_the_to_host(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(uri="sip:ping@[2001:db8::1]:5060", to="<sip:ping@nobody.example.net>")
    assert status_of(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot)) == 403


@pytest.mark.parametrize(
    "uri",
    [
        "sip:ping@example.com",  # the wildcard's base is not below it
        "sip:ping@teams.example.com",
        "sip:ping@unknown.example.org",
        "sip:ping@voip.example.com.evil.test",
        "sip:ping@192.0.2.1",  # an address, and the To is an address too
    ],
)
def test_unknown_names_get_403(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot, uri: str
) -> None:
    to = "<sip:ping@192.0.2.1>" if "192.0.2.1" in uri else None
    _, reply = one(edge.receive(request(uri=uri, to=to), Arrival(udp_listener, SOURCE), snapshot))
    assert isinstance(reply, Response)
    assert (reply.status, reply.reason) == (403, b"Domain Not Served")
    assert b"Contact" not in reply.fields
    assert edge.stats.requests[("OPTIONS", "rejected")] == 1


def test_drop_unknown_sends_nothing(udp_listener: Listener, snapshot: Snapshot) -> None:
    edge = Edge(SipConfig(drop_unknown=True), [udp_listener])
    data = request(uri="sip:x@nope.test")
    assert edge.receive(data, Arrival(udp_listener, SOURCE), snapshot) == ()
    assert fast_path(edge, data, Arrival(udp_listener, SOURCE), snapshot) == ()
    assert edge.stats.requests[("OPTIONS", "dropped")] == 2


def test_domain_added_live_is_admitted_on_the_next_request(
    edge: Edge, udp_listener: Listener
) -> None:
    before = make_snapshot(revision=1)
    after = make_snapshot(revision=2, extra_rules=(("new.example.net", "provider"),))
    data = request(uri="sip:ping@new.example.net")
    assert status_of(edge.receive(data, Arrival(udp_listener, SOURCE), before)) == 403
    assert status_of(edge.receive(data, Arrival(udp_listener, SOURCE), after)) == 200
    assert status_of(edge.receive(data, Arrival(udp_listener, SOURCE), before)) == 403


def test_keepalive_fast_path_matches_the_general_path(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    for uri, via in [
        ("sip:ping@voip.example.com", "SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-1"),
        ("sip:ping@a.teams.example.com", "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-2"),
        ("sip:ping@voip.example.com", "SIP/2.0/UDP 10.0.0.1:5062;rport;branch=z9hG4bK-3"),
        ("sip:ping@voip.example.com", "SIP/2.0/UDP [2001:db8::1];rport;branch=z9hG4bK-4"),
        ("sip:ping@192.0.2.1", "SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-5"),  # To decides
        ("sip:ping@unknown.example.org", "SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-6"),
        # Over UDP the answer goes where a UDP Via would send it, whatever this one says.
        ("sip:ping@voip.example.com", "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK-6"),
    ]:
        data = request(uri=uri, via=via)
        general = general_path(edge, data, Arrival(udp_listener, SOURCE), snapshot)
        fast = fast_path(edge, data, Arrival(udp_listener, SOURCE), snapshot)
        assert fast is not None
        assert fast == general
    # Anything unusual is declined and left to the general path.
    unusual = request(extra="Require: foo")
    assert fast_path(edge, unusual, Arrival(udp_listener, SOURCE), snapshot) is None
    assert status_of(edge.receive(unusual, Arrival(udp_listener, SOURCE), snapshot)) == 420
    for declined in (
        request(via="SIP/2.0/UDP 10.0.0.1;rport=7;branch=z9hG4bK-5"),
        request(via="SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-7;rport"),
        request(to="<sip:ping@voip.example.com>;tag=dialog"),
        request().replace(b"Max-Forwards: 70", b"max-forwards: 70"),
    ):
        assert fast_path(edge, declined, Arrival(udp_listener, SOURCE), snapshot) is None
        assert edge.receive(declined, Arrival(udp_listener, SOURCE), snapshot)


def test_received_and_rport_are_filled_in(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(via="SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bK-nat")
    send, reply = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert reply.fields[b"Via"] == (
        b"SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK-nat;received=192.0.2.7;rport=40000"
    )
    assert (send.host, send.port) == SOURCE  # RFC 3581: back to the source port
    data = request(via="SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK-x")
    send, reply = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert reply.fields[b"Via"].endswith(b";received=192.0.2.7")
    assert (send.host, send.port) == ("192.0.2.7", 5062)  # RFC 3261 §18.2.2


def test_max_forwards_zero_gets_483(edge: Edge, udp_listener: Listener, snapshot: Snapshot) -> None:
    for method in ("OPTIONS", "INVITE"):
        data = request(method=method, uri="sip:a@x.teams.example.com", max_forwards="0")
        _, reply = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
        assert isinstance(reply, Response) and reply.status == 483
    ack = request(method="ACK", uri="sip:a@x.teams.example.com", max_forwards="0")
    assert edge.receive(ack, Arrival(udp_listener, SOURCE), snapshot) == ()


def test_invite_is_forwarded_to_the_tenant_upstream(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(
        method="INVITE",
        uri="sip:+4930123@cust42.teams.example.com",
        extra="X-Sipzone-Tenant: spoofed",
        body="v=0\r\n",
    )
    send, fwd = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert (send.transport, send.host, send.port) == ("udp", "127.0.0.1", 5999)
    assert isinstance(fwd, Request)
    assert fwd.method == "INVITE" and fwd.uri == b"sip:+4930123@cust42.teams.example.com"
    top, original = fwd.fields[b"Via"].split(b", ")
    assert top.startswith(b"SIP/2.0/UDP 127.0.0.1:5070;branch=" + OUR_BRANCH)
    assert original == b"SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-abc"
    assert fwd.fields[b"Max-Forwards"] == b"69"
    core_facing, phone_facing = fwd.fields[b"Record-Route"].split(b", ")
    assert re.fullmatch(rb"<sip:szf1\.[\w-]+@127\.0\.0\.1:5070;transport=udp;lr>", core_facing)
    assert phone_facing == b"<sip:cust42.teams.example.com:5070;transport=udp;lr>"
    assert fwd.fields[b"x-sipzone-tenant"] == b"acme"
    assert b"x-sipzone-tenant" not in fwd.repeated  # the peer's claim was removed
    assert fwd.body == b"v=0\r\n"
    # Stateless: a retransmission gets the same branch, and so does its CANCEL.
    again, _ = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert again.data == send.data
    cancel = request(method="CANCEL", uri="sip:+4930123@cust42.teams.example.com")
    _, fwd_cancel = one(edge.receive(cancel, Arrival(udp_listener, SOURCE), snapshot))
    assert fwd_cancel.fields[b"Via"].split(b", ")[0] == top


def test_upstream_is_inherited_and_falls_back_to_the_site(
    edge: Edge, udp_listener: Listener
) -> None:
    data = request(method="MESSAGE", uri="sip:bob@cust42.example.org")
    send, fwd = one(edge.receive(data, Arrival(udp_listener, SOURCE), make_snapshot()))
    assert (send.host, send.port) == ("127.0.0.1", 5999)  # customer42 inherits acme's
    assert fwd.fields[b"x-sipzone-tenant"] == b"customer42"
    site_only = make_snapshot(upstream=None, site_upstream="sip:core.invalid:5080;transport=tcp")
    # A name goes out only as the transport resolved it in the background: until then, 503.
    assert status_of(edge.receive(data, Arrival(udp_listener, SOURCE), site_only)) == 503
    uri = "sip:core.invalid:5080;transport=tcp"
    assert edge.upstream_uris(site_only) == ({uri}, set())
    edge.set_upstreams({uri: Choice.of(Target("tcp", "192.0.2.80", 5080))})
    send, _ = one(edge.receive(data, Arrival(udp_listener, SOURCE), site_only))
    assert (send.transport, send.host, send.port) == ("tcp", "192.0.2.80", 5080)


def test_no_upstream_gets_503(
    edge: Edge, udp_listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    data = request(method="INVITE", uri="sip:a@x.teams.example.com")
    snap = make_snapshot(upstream=None)
    _, reply = one(edge.receive(data, Arrival(udp_listener, SOURCE), snap))
    assert isinstance(reply, Response) and reply.status == 503
    assert "no upstream" in caplog.text


def test_register_is_forwarded_without_record_route(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(
        method="REGISTER",
        uri="sip:cust42.teams.example.com",
        extra="Contact: <sip:alice@192.0.2.7:40000>",
    )
    _, fwd = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert isinstance(fwd, Request) and fwd.method == "REGISTER"
    assert b"Record-Route" not in fwd.fields
    assert fwd.fields[b"Contact"] == b"<sip:alice@192.0.2.7:40000>"


def test_in_dialog_request_pops_our_route(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(
        method="BYE",
        uri="sip:callee@127.0.0.1:5999",
        to="<sip:+4930123@cust42.teams.example.com>;tag=uas1",
        extra="Route: <sip:cust42.teams.example.com;lr>, <sip:127.0.0.1:5999;lr>",
    )
    send, fwd = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert (send.host, send.port) == ("127.0.0.1", 5999)
    assert fwd.fields[b"Route"] == b"<sip:127.0.0.1:5999;lr>"
    assert b"Record-Route" not in fwd.fields


def test_request_from_upstream_goes_to_the_request_uri(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    bye = request(
        method="BYE",
        uri="sip:caller@192.0.2.7:40000",
        to="<sip:caller@192.0.2.7>;tag=f1",
        via="SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-uas",
        extra="Route: <sip:cust42.teams.example.com;lr>",
    )
    send, fwd = one(edge.receive(bye, Arrival(udp_listener, ("127.0.0.1", 5999)), snapshot))
    assert (send.host, send.port) == ("192.0.2.7", 40000)
    assert b"Route" not in fwd.fields
    assert b"x-sipzone-tenant" not in fwd.fields


def test_response_from_upstream_pops_our_via(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(
        method="INVITE",
        uri="sip:a@x.teams.example.com",
        via="SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bK-nat",
    )
    _, fwd = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    response = (
        b"SIP/2.0 180 Ringing\r\nVia: "
        + fwd.fields[b"Via"]
        + b"\r\nFrom: <sip:probe@192.0.2.7>;tag=f1\r\nTo: <sip:a@x.teams.example.com>;tag=t\r\n"
        b"Call-ID: call-1@192.0.2.7\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    send, relayed = one(
        edge.receive(response, Arrival(udp_listener, ("127.0.0.1", 5999)), snapshot)
    )
    assert isinstance(relayed, Response) and relayed.status == 180
    assert relayed.fields[b"Via"] == (
        b"SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK-nat;received=192.0.2.7;rport=40000"
    )
    assert (send.transport, send.host, send.port) == ("udp", "192.0.2.7", 40000)
    assert edge.stats.relayed == 1


def test_response_not_for_us_is_dropped(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    bcast = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n"
        b"Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\r\nCall-ID: x\r\n"
        b"CSeq: 35 INVITE\r\nFrom: <sip:a@b.example>;tag=1\r\nTo: <sip:c@d.example>;tag=2\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert edge.receive(bcast, Arrival(udp_listener, SOURCE), snapshot) == ()


def test_tcp_reply_goes_back_over_the_connection(
    edge: Edge, tcp_listener: Listener, snapshot: Snapshot
) -> None:
    data = request(via="SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bK-t")
    send, reply = one(edge.receive(data, Arrival(tcp_listener, SOURCE, 7), snapshot))
    assert (send.transport, send.conn) == ("tcp", 7)
    assert reply.fields[b"Contact"] == b"<sip:voip.example.com:5070;transport=tcp>"
    invite = request(
        method="INVITE",
        uri="sip:a@x.teams.example.com",
        via="SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bK-t2",
    )
    _, fwd = one(edge.receive(invite, Arrival(tcp_listener, SOURCE, 7), snapshot))
    assert b";sz-c=7" in fwd.fields[b"Via"].split(b", ")[0]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (request(extra="Proxy-Require: foo"), 420, b""),
        (request(uri="<sip:a@voip.example.com>", to="<sip:a@voip.example.com>"), 400, b"<>"),
        (request().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), 400, b"CSeq"),
        (request().replace(b"Call-ID: call-1@192.0.2.7\r\n", b""), 400, b"Call-ID"),
        (request().replace(b"Content-Length: 0", b"Content-Length: 99"), 400, b"Content-Length"),
        (request().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, b"version"),
        (request(uri="mailto:a@voip.example.com"), 416, b"scheme"),
    ],
)
def test_bad_requests_get_an_answer_naming_the_problem(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot, data: bytes, status: int, words: bytes
) -> None:
    _, reply = one(edge.receive(data, Arrival(udp_listener, SOURCE), snapshot))
    assert isinstance(reply, Response) and reply.status == status
    assert words.lower() in reply.reason.lower()


def test_unanswerable_garbage_is_dropped_and_counted(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    for junk in (b"\x00\xff" * 50, b"hello", b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\r\n\r\n"):
        assert edge.receive(junk, Arrival(udp_listener, SOURCE), snapshot) == ()
    assert edge.stats.malformed == 3


def test_crlf_keepalive_datagrams_are_ignored_quietly(
    edge: Edge, udp_listener: Listener, snapshot: Snapshot
) -> None:
    assert edge.receive(b"\r\n\r\n", Arrival(udp_listener, SOURCE), snapshot) == ()
    assert edge.stats.malformed == 0
