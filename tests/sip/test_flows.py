"""Issue 8, both directions with phones, sans-IO: double Record-Route (RFC 5658), Path with the
phone's flow (RFC 3327, RFC 5626 §5.3), flow tokens that are signed and never followed when
forged, and the tenant headers: both toward the core, never toward a phone.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from sipzone.model.snapshot import Snapshot
from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS, SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.message import Request, Response, parse_address, parse_message, parse_uri
from sipzone.sip.signing import FLOW_PREFIX, Keys
from sipzone.sip.values import Arrival, Listener, Send, Target
from tests.sip.conftest import make_snapshot
from tests.sip.test_edge import one, request
from tests.sip.test_relay import response_to

UDP = Listener("udp", "127.0.0.1", 5070)
TCP = Listener("tcp", "127.0.0.1", 5071)
CORE = ("127.0.0.1", 5999)
FROM_CORE = Arrival(UDP, CORE)
PHONE_UDP = Arrival(UDP, ("203.0.113.5", 41000))  # a NAT binding: not the Contact's address
PHONE_TCP = Arrival(TCP, ("203.0.113.6", 52000), 17)  # the phone's own connection, id 17
ALICE = "sip:alice@cust42.teams.example.com"
TOKEN_URI = re.compile(rb"<sip:(szf1\.[\w-]+)@127\.0\.0\.1:5070;transport=udp;lr>")


@pytest.fixture
def snapshot() -> Snapshot:
    return dataclasses.replace(make_snapshot(), settings={BRANCH_SECRET: "c" * 64})


@pytest.fixture
def edge() -> Edge:
    return Edge(SipConfig(), [UDP, TCP])


def register(supported: str | None = None, extra: str = "") -> bytes:
    lines = [f"Supported: {supported}"] if supported is not None else []
    if extra:
        lines.append(extra)
    return request(
        method="REGISTER",
        uri="sip:cust42.teams.example.com",
        to=f"<{ALICE}>",
        via="SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bK-reg",
        extra="\r\n".join(["Contact: <sip:alice@10.0.0.5:5060>", *lines]),
    )


def forwarded(sends: tuple[Send, ...]) -> tuple[Send, Request]:
    send, message = one(sends)
    assert isinstance(message, Request), message
    return send, message


def path_of(edge: Edge, snapshot: Snapshot, phone: Arrival) -> bytes:
    send, fwd = forwarded(edge.receive(register(), phone, snapshot))
    assert (send.host, send.port) == CORE
    return fwd.fields[b"Path"]


def core_invite(route: bytes, to: str = ALICE, extra: str = "") -> bytes:
    """The core's INVITE to a registered phone: its Contact as the Request-URI, the Path as
    the Route (what a registrar's lookup with Path support produces)."""
    return request(
        method="INVITE",
        uri="sip:alice@10.0.0.5:5060",
        to=f"<{to}>",
        via="SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-core1",
        extra=f"Route: {route.decode()}" + (f"\r\n{extra}" if extra else ""),
    )


# -- REGISTER: Path ------------------------------------------------------------------------------


def test_register_gets_a_path_with_the_phones_flow(edge: Edge, snapshot: Snapshot) -> None:
    path = path_of(edge, snapshot, PHONE_UDP)
    m = TOKEN_URI.fullmatch(path)
    assert m, path
    keys = Keys.from_settings(snapshot.settings)
    assert keys is not None
    assert keys.flow(m.group(1)) == Target("udp", "203.0.113.5", 41000)
    # Over TCP the token names the phone's connection; the Path faces the core (UDP here).
    tcp_path = path_of(edge, snapshot, PHONE_TCP)
    m = TOKEN_URI.fullmatch(tcp_path)
    assert m and keys.flow(m.group(1)) == Target("tcp", "203.0.113.6", 52000, 17)


def test_our_path_goes_on_top_and_require_path_follows_the_uas_support(
    edge: Edge, snapshot: Snapshot
) -> None:
    data = register("replaces, path", "Path: <sip:sbc.customer.example;lr>")
    _, fwd = forwarded(edge.receive(data, PHONE_UDP, snapshot))
    ours, theirs = fwd.fields[b"Path"].split(b", ")
    assert TOKEN_URI.fullmatch(ours) and theirs == b"<sip:sbc.customer.example;lr>"
    assert fwd.fields[b"Require"] == b"path"  # RFC 3327 §5.2: the registrar must support it
    _, plain = forwarded(edge.receive(register("replaces"), PHONE_UDP, snapshot))
    assert b"Require" not in plain.fields and TOKEN_URI.fullmatch(plain.fields[b"Path"])
    assert b"Record-Route" not in plain.fields


# -- the core's INVITE to a registered phone -----------------------------------------------


@pytest.mark.parametrize("phone", [PHONE_UDP, PHONE_TCP], ids=["udp", "tcp"])
def test_the_cores_invite_by_path_goes_out_over_the_phones_flow(
    edge: Edge, snapshot: Snapshot, phone: Arrival
) -> None:
    path = path_of(edge, snapshot, phone)
    spoof = "X-Sipzone-Tenant: leak\r\nX-Sipzone-Caller-Tenant: leak"
    send, fwd = forwarded(edge.receive(core_invite(path, extra=spoof), FROM_CORE, snapshot))
    assert (send.transport, send.host, send.port, send.conn) == (
        phone.listener.transport, *phone.addr, phone.conn,
    )  # fmt: skip
    assert fwd.uri == b"sip:alice@10.0.0.5:5060" and b"Route" not in fwd.fields
    assert b"x-sipzone-tenant" not in fwd.fields  # never toward a phone
    assert b"x-sipzone-caller-tenant" not in fwd.fields
    # Our Via leaves by the phone's transport; the phone's answers come back to it.
    assert fwd.fields[b"Via"].startswith(f"SIP/2.0/{phone.listener.transport.upper()} ".encode())
    phone_facing, core_facing = fwd.fields[b"Record-Route"].split(b", ")
    listener = phone.listener
    assert (
        phone_facing
        == (
            f"<sip:cust42.teams.example.com:{listener.port};transport={listener.transport};lr>"
        ).encode()
    )
    m = TOKEN_URI.fullmatch(core_facing)
    assert m and m.group(1) in path  # the same flow as the Path names
    # The phone's answer is relayed to the core, without anything of ours added.
    relayed, reply = one(edge.receive(response_to(send.data), phone, snapshot))
    assert isinstance(reply, Response) and (relayed.host, relayed.port) == CORE


def test_the_phone_facing_entry_is_an_address_when_we_do_not_serve_the_to_name(
    edge: Edge, snapshot: Snapshot
) -> None:
    path = path_of(edge, snapshot, PHONE_UDP)
    data = core_invite(path, to="sip:+4930555@core.invalid")
    _, fwd = forwarded(edge.receive(data, FROM_CORE, snapshot))
    phone_facing = fwd.fields[b"Record-Route"].split(b", ")[0]
    assert phone_facing == b"<sip:127.0.0.1:5070;transport=udp;lr>"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + (b"A" if t[-1:] != b"A" else b"B"),  # the MAC
        lambda t: t[:10] + (b"A" if t[10:11] != b"A" else b"B") + t[11:],  # the flow
        lambda t: t + b"AA",  # longer
        lambda t: t[:-4],  # shorter
        lambda t: t.replace(b"szf1.", b"szf1.*"),  # not base64
    ],
)
def test_a_tampered_flow_token_is_refused_and_nothing_is_sent(
    edge: Edge, snapshot: Snapshot, tamper: object
) -> None:
    path = path_of(edge, snapshot, PHONE_UDP)
    token = TOKEN_URI.fullmatch(path).group(1)  # type: ignore[union-attr]
    bad = path.replace(token, tamper(token))  # type: ignore[operator]
    assert bad != path
    send, reply = one(edge.receive(core_invite(bad), FROM_CORE, snapshot))
    assert isinstance(reply, Response) and (reply.status, reply.reason) == (
        403, b"Invalid Flow Token",
    )  # fmt: skip
    assert (send.host, send.port) == CORE  # the answer, and nothing else
    ack = core_invite(bad).replace(b"INVITE", b"ACK")
    assert edge.receive(ack, FROM_CORE, snapshot) == ()
    assert edge.stats.requests[("INVITE", "bad_flow_token")] == 1


def test_a_token_signed_with_another_secret_is_refused_the_previous_one_kept(
    edge: Edge, snapshot: Snapshot
) -> None:
    path = path_of(edge, snapshot, PHONE_UDP)
    rotated = dataclasses.replace(
        snapshot, revision=2, settings={BRANCH_SECRET: "d" * 64, BRANCH_SECRET_PREVIOUS: "c" * 64}
    )
    send, _ = forwarded(edge.receive(core_invite(path), FROM_CORE, rotated))
    assert (send.host, send.port) == PHONE_UDP.addr
    stranger = dataclasses.replace(snapshot, revision=3, settings={BRANCH_SECRET: "e" * 64})
    _, reply = one(edge.receive(core_invite(path), FROM_CORE, stranger))
    assert isinstance(reply, Response) and reply.status == 403


def test_a_phone_cannot_use_a_token_to_reach_another_phone(edge: Edge, snapshot: Snapshot) -> None:
    """Requests from outside go to the core only: a genuine token of someone else's flow in a
    phone's Route is popped with our entry, never followed."""
    path = path_of(edge, snapshot, PHONE_UDP)
    data = request(
        method="MESSAGE", uri=ALICE, via="SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK-m",
        extra=f"Route: {path.decode()}",
    )  # fmt: skip
    send, _ = forwarded(edge.receive(data, Arrival(UDP, ("198.51.100.9", 5060)), snapshot))
    assert (send.host, send.port) == CORE


def test_a_phones_request_is_not_refused_for_a_stale_token(edge: Edge, snapshot: Snapshot) -> None:
    """A phone's tokens are never followed, so never checked: a call that outlived two secret
    rotations can still be hung up by the phone."""
    path = path_of(edge, snapshot, PHONE_UDP)
    token = TOKEN_URI.fullmatch(path).group(1)  # type: ignore[union-attr]
    stale = path.replace(token, token[:-2] + b"xx")
    bye = request(
        method="BYE", uri="sip:core@127.0.0.1:5999", to=f"<{ALICE}>;tag=c",
        extra=f"Route: <sip:cust42.teams.example.com:5070;lr>, {stale.decode()}",
    )  # fmt: skip
    send, _ = forwarded(edge.receive(bye, PHONE_UDP, snapshot))
    assert (send.host, send.port) == CORE


# -- a call both ways, and hang-ups from either side ----------------------------------------------


def route_set(record_route: bytes, uac: bool) -> str:
    entries = record_route.split(b", ")
    return ", ".join(e.decode() for e in (reversed(entries) if uac else entries))


@pytest.mark.parametrize("caller", [PHONE_UDP, PHONE_TCP], ids=["udp", "tcp"])
def test_a_call_from_a_phone_and_in_dialog_requests_both_ways(
    edge: Edge, snapshot: Snapshot, caller: Arrival
) -> None:
    invite = request(
        method="INVITE",
        uri="sip:+4930123@cust42.teams.example.com",
        via=f"SIP/2.0/{caller.listener.transport.upper()} 10.0.0.7:5060;rport;branch=z9hG4bK-i",
        extra="Contact: <sip:bob@10.0.0.7:5060>",
    )
    send, fwd = forwarded(edge.receive(invite, caller, snapshot))
    assert (send.host, send.port) == CORE
    record_route = fwd.fields[b"Record-Route"]
    core_facing, phone_facing = record_route.split(b", ")
    assert TOKEN_URI.fullmatch(core_facing)  # the core needs no name to reach us
    listener = caller.listener
    assert (
        phone_facing
        == (
            f"<sip:cust42.teams.example.com:{listener.port};transport={listener.transport};lr>"
        ).encode()
    )
    # The core record-routes too (Kamailio's record_route()) and answers.
    core_rr = b"<sip:127.0.0.1:5999;lr>, " + record_route
    answer = response_to(send.data).replace(
        b"Content-Length", b"Record-Route: " + core_rr + b"\r\nContent-Length"
    )
    relayed, ok = one(edge.receive(answer, FROM_CORE, snapshot))
    assert (relayed.transport, relayed.host, relayed.port, relayed.conn) == (
        listener.transport, *caller.addr, caller.conn,
    )  # fmt: skip
    assert isinstance(ok, Response) and ok.fields[b"Record-Route"] == core_rr
    # The caller hangs up along its route set (the Record-Route reversed).
    bye = request(
        method="BYE", uri="sip:callee@127.0.0.1:5999",
        to="<sip:+4930123@cust42.teams.example.com>;tag=uas",
        via=f"SIP/2.0/{listener.transport.upper()} 10.0.0.7:5060;branch=z9hG4bK-b",
        extra=f"Route: {route_set(core_rr, uac=True)}",
    )  # fmt: skip
    send, fwd = forwarded(edge.receive(bye, caller, snapshot))
    assert (send.host, send.port) == CORE
    assert fwd.fields[b"Route"] == b"<sip:127.0.0.1:5999;lr>"
    # The core hangs up: its route set is the Record-Route as it saw it, its own popped.
    core_bye = request(
        method="BYE", uri="sip:bob@10.0.0.7:5060",
        to="<sip:+4930123@cust42.teams.example.com>;tag=f1",
        via="SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-cb",
        extra=f"Route: {route_set(record_route, uac=False)}",
    )  # fmt: skip
    send, fwd = forwarded(edge.receive(core_bye, FROM_CORE, snapshot))
    assert (send.transport, send.host, send.port, send.conn) == (
        listener.transport, *caller.addr, caller.conn,
    )  # fmt: skip
    assert b"Route" not in fwd.fields and b"Record-Route" not in fwd.fields


# -- the tenant headers -------------------------------------------------------------------


def test_the_callers_tenant_goes_to_the_core_in_its_own_header(
    edge: Edge, snapshot: Snapshot
) -> None:
    def invite(caller: str, extra: str = "") -> Request:
        data = request(method="INVITE", uri="sip:+4930123@cust42.teams.example.com", extra=extra)
        data = data.replace(b"From: <sip:probe@192.0.2.7>", f"From: <{caller}>".encode())
        _, fwd = forwarded(edge.receive(data, PHONE_UDP, snapshot))
        return fwd

    fwd = invite("sip:bob@cust42.example.org", "X-Sipzone-Caller-Tenant: spoofed")
    assert fwd.fields[b"x-sipzone-tenant"] == b"acme"  # the dialled name's owner
    assert fwd.fields[b"x-sipzone-caller-tenant"] == b"customer42"  # the From name's owner
    assert b"x-sipzone-caller-tenant" not in fwd.repeated  # the peer's claim removed
    for unknown in ("sip:bob@unknown.example.net", "sip:bob@192.0.2.7", "tel:+4930999"):
        assert b"x-sipzone-caller-tenant" not in invite(unknown).fields


def test_tenant_headers_are_configurable(snapshot: Snapshot) -> None:
    config = SipConfig(tenant_header="X-Callee-Owner", caller_tenant_header="X-Caller-Owner")
    edge = Edge(config, [UDP, TCP])
    data = request(method="MESSAGE", uri="sip:a@cust42.example.org")
    data = data.replace(b"From: <sip:probe@192.0.2.7>", b"From: <sip:b@voip.example.com>")
    _, fwd = forwarded(edge.receive(data, PHONE_UDP, snapshot))
    assert fwd.fields[b"x-callee-owner"] == b"customer42"
    assert fwd.fields[b"x-caller-owner"] == b"provider"


def test_tenant_headers_never_leave_toward_a_phone_in_a_response(
    edge: Edge, snapshot: Snapshot
) -> None:
    send, _ = forwarded(edge.receive(request(method="INVITE", uri=ALICE), PHONE_UDP, snapshot))
    leaky = response_to(send.data).replace(
        b"Content-Length",
        b"X-Sipzone-Tenant: acme\r\nx-sipzone-caller-tenant: acme\r\nContent-Length",
    )
    _, reply = one(edge.receive(leaky, FROM_CORE, snapshot))
    assert isinstance(reply, Response)
    assert not any(key.startswith(b"x-sipzone") for key in reply.fields)


def test_a_core_facing_uri_parses_as_ours(edge: Edge, snapshot: Snapshot) -> None:
    """What we record is what our own routing recognises (host and port of a listener)."""
    path = path_of(edge, snapshot, PHONE_TCP)
    uri = parse_uri(parse_address(path).uri)
    assert uri.user is not None and uri.user.startswith(FLOW_PREFIX)
    assert (uri.host, uri.port, uri.transport) == (b"127.0.0.1", 5070, "udp")
    assert parse_message(core_invite(path))  # and a request carrying it parses
