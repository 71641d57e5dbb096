"""Issue 8, in-dialog routing by the book, sans-IO: our Route entries are popped (both, under
double record-routing), strict routers are served, and a request from outside goes to a
configured upstream only, never to a host a peer names.
"""

from __future__ import annotations

import dataclasses

import pytest

from sipzone.model.snapshot import Snapshot
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.sip import BRANCH_SECRET, SipConfig
from sipzone.sip.edge import Edge
from sipzone.sip.message import Request, Response
from sipzone.sip.values import Arrival, Listener
from tests.sip.conftest import make_snapshot
from tests.sip.test_edge import SOURCE, one, request

UDP = Listener("udp", "127.0.0.1", 5070)
TCP = Listener("tcp", "127.0.0.1", 5070)
CORE = ("127.0.0.1", 5999)  # make_snapshot's upstream
OTHER_CORE = ("127.0.0.1", 5998)  # another tenant's upstream
PHONE = Arrival(UDP, SOURCE)
FROM_CORE = Arrival(UDP, CORE)
DIALLED = "sip:+4930123@cust42.teams.example.com"


@pytest.fixture
def snapshot() -> Snapshot:
    """make_snapshot's tenants and names, and tenant ``other`` with a core of its own."""
    tenants = TenancyTree(
        [
            Tenant("acme", "provider", upstream="sip:127.0.0.1:5999"),
            Tenant("customer42", "acme"),
            Tenant("other", "provider", upstream="sip:127.0.0.1:5998"),
        ]
    )
    rules = [
        ("voip.example.com", "provider"),
        ("*.teams.example.com", "acme"),
        ("cust42.example.org", "customer42"),
        ("other.example.net", "other"),
    ]
    snap = Snapshot.build(1, tenants, rules, sites=make_snapshot().sites)
    return dataclasses.replace(snap, settings={BRANCH_SECRET: "b" * 64})


@pytest.fixture
def edge() -> Edge:
    return Edge(SipConfig(), [UDP, TCP])


def in_dialog(method: str = "BYE", uri: str = "sip:callee@127.0.0.1:5999", **kw: str) -> bytes:
    """An in-dialog request as a phone sends it along its route set."""
    return request(method=method, uri=uri, to=f"<{DIALLED}>;tag=uas1", **kw)


def from_core(method: str = "BYE", uri: str = "sip:caller@192.0.2.7:40000", **kw: str) -> bytes:
    return request(
        method=method,
        uri=uri,
        to="<sip:caller@cust42.teams.example.com>;tag=f1",
        via="SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-core",
        **kw,
    )


# -- our entries are popped: one, or both under double record-routing --------------------------


@pytest.mark.parametrize(
    "ours",
    [
        ["<sip:cust42.teams.example.com;lr>"],  # as the edge recorded before issue 8
        ["<sip:cust42.teams.example.com:5070;transport=udp;lr>", "<sip:127.0.0.1:5070;lr>"],
        ["<sip:127.0.0.1:5070;transport=tcp;lr>", "<sip:cust42.teams.example.com:5070;lr>"],
    ],
)
def test_a_phones_in_dialog_request_pops_ours_and_goes_to_the_core(
    edge: Edge, snapshot: Snapshot, ours: list[str]
) -> None:
    route = ", ".join([*ours, "<sip:127.0.0.1:5999;lr;ftag=k>"])
    send, fwd = one(edge.receive(in_dialog(extra=f"Route: {route}"), PHONE, snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == CORE
    assert fwd.fields[b"Route"] == b"<sip:127.0.0.1:5999;lr;ftag=k>"
    assert fwd.uri == b"sip:callee@127.0.0.1:5999"


def test_the_cores_in_dialog_request_pops_both_of_ours(edge: Edge, snapshot: Snapshot) -> None:
    route = "<sip:127.0.0.1:5070;transport=udp;lr>, <sip:cust42.teams.example.com:5070;lr>"
    send, fwd = one(edge.receive(from_core(extra=f"Route: {route}"), FROM_CORE, snapshot))
    assert isinstance(fwd, Request) and b"Route" not in fwd.fields
    assert (send.host, send.port) == SOURCE  # the Request-URI: the caller's Contact


def test_a_third_entry_of_ours_is_a_spiral_through_the_core(edge: Edge, snapshot: Snapshot) -> None:
    """A core that does not record-route leaves both sides' entries of ours adjacent: one pass
    pops one side's pair, the rest goes to the core, which loose-routes it back to us."""
    route = (
        "<sip:cust42.teams.example.com:5070;lr>, <sip:127.0.0.1:5070;lr>, "
        "<sip:127.0.0.1:5070;lr;x=callee>, <sip:voip.example.com:5070;lr>"
    )
    send, fwd = one(edge.receive(in_dialog(extra=f"Route: {route}"), PHONE, snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == CORE
    rest = b"<sip:127.0.0.1:5070;lr;x=callee>, <sip:voip.example.com:5070;lr>"
    assert fwd.fields[b"Route"] == rest


# -- strict routers ------------------------------------------------------------------------------


def test_a_strict_router_before_us_gets_its_request_uri_repaired(
    edge: Edge, snapshot: Snapshot
) -> None:
    """RFC 3261 §16.4: our record-routed URI as the Request-URI: the last Route is the real
    Request-URI; what is left of the Route is routed on as usual."""
    data = from_core(
        uri="sip:127.0.0.1:5070;transport=udp;lr",
        extra="Route: <sip:cust42.teams.example.com:5070;lr>, <sip:caller@192.0.2.7:40000>",
    )
    send, fwd = one(edge.receive(data, FROM_CORE, snapshot))
    assert isinstance(fwd, Request) and fwd.uri == b"sip:caller@192.0.2.7:40000"
    assert b"Route" not in fwd.fields
    assert (send.host, send.port) == SOURCE


def test_a_strict_router_after_us_gets_the_request_uri_in_the_route(
    edge: Edge, snapshot: Snapshot
) -> None:
    """RFC 3261 §16.6 step 6: the next hop has no lr: its URI becomes the Request-URI and the
    Request-URI the last Route."""
    data = from_core(extra="Route: <sip:127.0.0.1:5070;lr>, <sip:192.0.2.50:5080>")
    send, fwd = one(edge.receive(data, FROM_CORE, snapshot))
    assert isinstance(fwd, Request) and fwd.uri == b"sip:192.0.2.50:5080"
    assert fwd.fields[b"Route"] == b"<sip:caller@192.0.2.7:40000>"
    assert (send.host, send.port) == ("192.0.2.50", 5080)


# -- from outside, only configured upstreams ------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        "<sip:127.0.0.1:16998;lr>",  # the repro: a sink on another port
        "<sip:cust42.teams.example.com;lr>, <sip:192.0.2.66;lr>",  # ours, then elsewhere
        "<sip:127.0.0.1:5070;lr>, <sip:127.0.0.1:5070;lr>, <sip:10.0.0.1:5060;lr>",
        "<sip:evil.example;lr>",  # a name: neither looked up nor followed
        "<sip:127.0.0.1:6000;lr>",  # the core's address, another port
        "<sip:127.0.0.1;lr>",  # the core's address, the default port
    ],
)
def test_a_foreign_route_from_outside_is_refused_and_nothing_is_sent_there(
    edge: Edge, snapshot: Snapshot, route: str
) -> None:
    for method in ("INVITE", "MESSAGE", "BYE"):
        data = request(
            method=method, uri=DIALLED, to=f"<{DIALLED}>" + (";tag=x" if method == "BYE" else ""),
            extra=f"Route: {route}",
        )  # fmt: skip
        send, reply = one(edge.receive(data, PHONE, snapshot))
        assert isinstance(reply, Response), route
        assert (reply.status, reply.reason) == (403, b"Route Not Allowed")
        assert (send.host, send.port) == SOURCE
    ack = request(method="ACK", uri=DIALLED, to=f"<{DIALLED}>;tag=x", extra=f"Route: {route}")
    assert edge.receive(ack, PHONE, snapshot) == ()
    assert edge.stats.forwarded == 0
    assert edge.stats.requests[("INVITE", "route_refused")] == 1


def test_a_route_to_another_configured_upstream_is_followed(edge: Edge, snapshot: Snapshot) -> None:
    """A dialog set up through another tenant's core (the callee's) stays with that core."""
    data = in_dialog(extra="Route: <sip:127.0.0.1:5070;lr>, <sip:127.0.0.1:5998;lr>")
    send, fwd = one(edge.receive(data, PHONE, snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == OTHER_CORE


def test_an_in_dialog_request_to_a_domain_we_do_not_serve_follows_the_cores_route(
    edge: Edge, snapshot: Snapshot
) -> None:
    """The callee's BYE names the caller (a number at the core's domain) in its To: the
    core's Record-Route is enough to know where it goes."""
    data = request(
        method="BYE",
        uri="sip:caller@127.0.0.1:5999",
        to="<sip:+4930555@core.invalid>;tag=c1",
        extra="Route: <sip:127.0.0.1:5070;lr>, <sip:127.0.0.1:5999;lr>",
    )
    send, fwd = one(edge.receive(data, PHONE, snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == CORE
    assert b"x-sipzone-tenant" not in fwd.fields  # no name we serve: no tenant to tell


def test_our_fqdn_route_admits_an_in_dialog_request(edge: Edge, snapshot: Snapshot) -> None:
    """Without the core's entry (a core that does not record-route), the name we recorded
    says whose dialog it is."""
    data = request(
        method="BYE",
        uri="sip:caller@192.0.2.80:5060",
        to="<sip:+4930555@core.invalid>;tag=c1",
        extra="Route: <sip:cust42.teams.example.com:5070;lr>, <sip:127.0.0.1:5070;lr>",
    )
    send, fwd = one(edge.receive(data, PHONE, snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == CORE
    assert fwd.fields[b"x-sipzone-tenant"] == b"acme"
