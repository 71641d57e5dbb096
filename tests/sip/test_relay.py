"""Issue 7, sans-IO: responses are relayed only where a request we forwarded came from (signed
branches), loops are cut, Route and Via are judged by host AND port.  Each reproduction from
the issue is kept as written, then the class of failure around it.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipzone.model.snapshot import Snapshot
from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS, SipConfig
from sipzone.sip import edge as edge_module
from sipzone.sip import keepalive as keepalive_module
from sipzone.sip import message as message_module
from sipzone.sip.choice import Choice
from sipzone.sip.edge import Edge
from sipzone.sip.message import MAX_VIAS, Request, Response, parse_message
from sipzone.sip.signing import BRANCH_LEN, OUR_BRANCH, Mac
from sipzone.sip.values import Arrival, Listener, Send, Target
from tests.sip.conftest import fast_path, make_snapshot
from tests.sip.test_edge import SOURCE, one, request, status_of

UDP = Listener("udp", "127.0.0.1", 5070)
TCP = Listener("tcp", "127.0.0.1", 5070)
CORE = ("127.0.0.1", 5999)  # make_snapshot's upstream
INVITE_URI = "sip:+4930123@cust42.teams.example.com"


def with_secrets(snapshot: Snapshot, current: str, previous: str | None = None) -> Snapshot:
    values = {BRANCH_SECRET: current}
    if previous is not None:
        values[BRANCH_SECRET_PREVIOUS] = previous
    return dataclasses.replace(snapshot, settings=values)


@pytest.fixture
def snapshot() -> Snapshot:
    return with_secrets(make_snapshot(), "a" * 64)


@pytest.fixture
def edge() -> Edge:
    return Edge(SipConfig(), [UDP, TCP])


def response_to(forwarded: bytes, status: int = 200, body: bytes = b"") -> bytes:
    """What a UAS answers to ``forwarded``: its Via lines copied, a To tag added."""
    fwd = parse_message(forwarded)
    assert isinstance(fwd, Request)
    vias = [b"Via: " + value for key, _, value in fwd.headers() if key == b"Via"]
    return b"\r\n".join(
        [
            b"SIP/2.0 %d Whatever" % status,
            *vias,
            b"From: " + fwd.fields[b"From"],
            b"To: " + fwd.fields[b"To"] + b";tag=uas",
            b"Call-ID: " + fwd.fields[b"Call-ID"],
            b"CSeq: " + fwd.fields[b"CSeq"],
            b"Content-Length: %d" % len(body),
            b"",
            body,
        ]
    )


def forward(
    edge: Edge,
    snapshot: Snapshot,
    data: bytes,
    listener: Listener = UDP,
    conn: int | None = None,
) -> Send:
    send, fwd = one(edge.receive(data, Arrival(listener, SOURCE, conn), snapshot))
    assert isinstance(fwd, Request), fwd
    assert (send.host, send.port) == CORE
    return send


def invite(via: str = "SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-abc", **kw: str) -> bytes:
    return request(method="INVITE", uri=INVITE_URI, via=via, **kw)


# -- 1. forged responses ----------------------------------------------------------------------


def test_the_issue_repro_a_forged_200_naming_a_tcp_target_is_dropped(
    edge: Edge, snapshot: Snapshot
) -> None:
    body = b"GET /admin HTTP/1.0\r\n\r\n"
    forged = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKszdead\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.1:16998;branch=z9hG4bKv\r\n"
        b"From: <sip:a@b.example>;tag=1\r\nTo: <sip:c@d.example>;tag=2\r\n"
        b"Call-ID: forged\r\nCSeq: 1 INVITE\r\nContent-Length: %d\r\n\r\n%s"
    ) % (len(body), body)
    for source in (("203.0.113.66", 5060), CORE):
        assert edge.receive(forged, Arrival(UDP, source), snapshot) == ()
        assert edge.receive(forged, Arrival(TCP, source, 3), snapshot) == ()
    assert edge.stats.requests[("response", "forged")] == 4
    assert edge.stats.relayed == 0


def test_a_genuine_response_is_relayed_to_where_the_request_came_from(
    edge: Edge, snapshot: Snapshot
) -> None:
    sent = forward(edge, snapshot, invite(via="SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bK-n"))
    ours = parse_message(sent.data).fields[b"Via"].split(b", ")[0]
    assert ours.startswith(b"SIP/2.0/UDP 127.0.0.1:5070;branch=" + OUR_BRANCH)
    assert len(ours.split(b"branch=")[1]) == BRANCH_LEN
    relayed, reply = one(edge.receive(response_to(sent.data, 180), Arrival(UDP, CORE), snapshot))
    assert (relayed.transport, relayed.host, relayed.port) == ("udp", *SOURCE)  # rport
    assert isinstance(reply, Response) and reply.fields[b"Via"] == (
        b"SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bK-n;received=192.0.2.7;rport=40000"
    )
    # A UAS that re-spaces the Via it copies (legal: SWS, RFC 3261 §25.1) is still answered.
    respaced = response_to(sent.data).replace(b";branch=z9hG4bK-n;", b" ; branch=z9hG4bK-n ;")
    assert b" ; branch=z9hG4bK-n ;" in respaced
    assert len(edge.receive(respaced, Arrival(UDP, CORE), snapshot)) == 1


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"received=192.0.2.7", b"received=127.0.0.1"),  # another host
        (b"rport=40000", b"rport=16998"),  # another port
        (b";received=192.0.2.7;rport=40000", b""),  # back to the sent-by
        (b"SIP/2.0/UDP 10.1.1.1:5062", b"SIP/2.0/TCP 10.1.1.1:5062"),  # another transport
        (b"10.1.1.1:5062", b"10.1.1.1:5063"),
        (b"branch=z9hG4bK-n", b"branch=z9hG4bK-m"),
        (b";rport=40000", b";rport=40000;maddr=127.0.0.1"),
    ],
)
def test_a_genuine_branch_with_another_way_back_is_forged(
    edge: Edge, snapshot: Snapshot, old: bytes, new: bytes
) -> None:
    sent = forward(edge, snapshot, invite(via="SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bK-n"))
    genuine = response_to(sent.data, body=b"payload")
    tampered = genuine.replace(old, new, 1)
    assert tampered != genuine
    assert edge.receive(tampered, Arrival(UDP, CORE), snapshot) == ()
    assert edge.stats.requests[("response", "forged")] == 1


def test_the_connection_and_our_transport_are_signed_too(edge: Edge, snapshot: Snapshot) -> None:
    data = invite(via="SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bK-t")
    sent = forward(edge, snapshot, data, listener=TCP, conn=7)
    genuine = response_to(sent.data)
    relayed = edge.receive(genuine, Arrival(UDP, CORE), snapshot)
    assert [(s.transport, s.host, s.conn) for s in relayed] == [("tcp", "192.0.2.7", 7)]
    for old, new in [
        (b";sz-c=7", b";sz-c=8"),
        (b";sz-c=7", b""),
        (b"SIP/2.0/UDP 127", b"SIP/2.0/TCP 127"),
    ]:
        assert edge.receive(genuine.replace(old, new, 1), Arrival(UDP, CORE), snapshot) == ()
    assert edge.stats.requests[("response", "forged")] == 3


def test_stray_responses_are_counted_apart_from_forged_ones(edge: Edge, snapshot: Snapshot) -> None:
    stray = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bKszx\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:16998;branch=z9hG4bKv\r\nCall-ID: x\r\n"
        b"CSeq: 1 INVITE\r\nFrom: <sip:a@b.example>;tag=1\r\nTo: <sip:c@d.example>;tag=2\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert edge.receive(stray, Arrival(UDP, SOURCE), snapshot) == ()
    assert edge.stats.requests[("response", "stray")] == 1
    assert edge.stats.requests[("response", "forged")] == 0


def test_the_branch_is_deterministic_for_retransmissions_cancel_and_ack(
    edge: Edge, snapshot: Snapshot
) -> None:
    """RFC 3261 §16.11: any worker, any node, any time computes the same branch."""
    via = "SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bK-d"
    first = forward(edge, snapshot, invite(via=via))
    again = forward(Edge(SipConfig(), [UDP, TCP]), snapshot, invite(via=via))  # another worker
    assert again.data == first.data
    top = parse_message(first.data).fields[b"Via"].split(b", ")[0]
    cancel = request(method="CANCEL", uri=INVITE_URI, via=via)
    ack = request(
        method="ACK", uri=INVITE_URI, via=via, to=f"<{INVITE_URI}>;tag=uas-486"
    )  # the ACK of a non-2xx answer: same branch as the INVITE (§17.1.1.3)
    for data in (cancel, ack):
        sent = forward(edge, snapshot, data)
        assert parse_message(sent.data).fields[b"Via"].split(b", ")[0] == top
    # A new transaction of the same call gets another branch.
    other = forward(edge, snapshot, invite(via=via.replace("-d", "-e")))
    assert parse_message(other.data).fields[b"Via"].split(b", ")[0] != top


def test_rotation_keeps_the_previous_secret_until_the_next_one(edge: Edge) -> None:
    base = make_snapshot()
    first = with_secrets(base, "1" * 64)
    sent = forward(edge, first, invite())
    answer = response_to(sent.data)
    rotated = dataclasses.replace(with_secrets(base, "2" * 64, "1" * 64), revision=2)
    assert len(edge.receive(answer, Arrival(UDP, CORE), rotated)) == 1  # overlap: still relayed
    again = dataclasses.replace(with_secrets(base, "3" * 64, "2" * 64), revision=3)
    assert edge.receive(answer, Arrival(UDP, CORE), again) == ()  # two rotations later: gone
    # What the new secret signs is relayed by every edge holding it (workers, nodes).
    sent = forward(edge, again, invite())
    other_node = Edge(SipConfig(), [UDP, TCP])
    assert len(other_node.receive(response_to(sent.data), Arrival(UDP, CORE), again)) == 1


def test_without_a_stored_secret_an_edge_signs_with_its_own(edge: Edge) -> None:
    bare = make_snapshot()
    sent = forward(edge, bare, invite())
    assert len(edge.receive(response_to(sent.data), Arrival(UDP, CORE), bare)) == 1
    stranger = Edge(SipConfig(), [UDP, TCP])
    assert stranger.receive(response_to(sent.data), Arrival(UDP, CORE), bare) == ()


# -- property: nothing the edge did not produce leaves it --------------------------------------

HOSTS = ["127.0.0.1", "127.0.0.2", "[::1]", "10.0.0.1", "192.0.2.7", "255.255.255.255",
         "localhost", "evil.example", "voip.example.com"]  # fmt: skip
TOKENS = st.text("abcdefz0123456789-.", min_size=0, max_size=40)


@st.composite
def via_strategy(draw: st.DrawFn, genuine_tops: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["ours", "genuine", "other"]))
    if kind == "genuine" and genuine_tops:
        return draw(st.sampled_from(genuine_tops))  # a branch we really wrote, reused
    transport = draw(st.sampled_from(["UDP", "TCP", "udp", "TLS"]))
    if kind == "ours":
        host, port = draw(st.sampled_from([("127.0.0.1", 5070), ("127.0.0.1", None)]))
        tail = draw(st.sampled_from(["", "dead", "0" * (BRANCH_LEN - len(OUR_BRANCH))]))
        branch = OUR_BRANCH.decode() + tail + draw(TOKENS)
    else:
        host = draw(st.sampled_from(HOSTS))
        port = draw(st.one_of(st.none(), st.integers(1, 65535)))
        branch = "z9hG4bK" + draw(TOKENS) + "x"
    params = draw(
        st.lists(
            st.sampled_from(
                [
                    ";rport",
                    ";rport=5070",
                    ";received=127.0.0.1",
                    ";received=evil.example",
                    ";sz-c=1",
                    ";maddr=127.0.0.1",
                    ";ttl=1",
                ]
            ),
            max_size=3,
        )
    )
    sent_by = host if port is None else f"{host}:{port}"
    return f"SIP/2.0/{transport} {sent_by};branch={branch}{''.join(params)}".encode()


def _genuine_tops() -> Iterator[bytes]:
    edge = Edge(SipConfig(), [UDP, TCP])
    snap = with_secrets(make_snapshot(), "a" * 64)
    for n in range(3):
        for listener, conn in ((UDP, None), (TCP, 4)):
            via = f"SIP/2.0/{listener.transport.upper()} 192.0.2.7:40000;branch=z9hG4bK-g{n}"
            sent = forward(edge, snap, invite(via=via), listener=listener, conn=conn)
            yield parse_message(sent.data).fields[b"Via"].split(b", ")[0]


GENUINE_TOPS = list(_genuine_tops())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(100, 699),
    vias=st.lists(via_strategy(GENUINE_TOPS), min_size=1, max_size=6),
    one_line=st.booleans(),
    body=st.binary(max_size=200),
    source=st.sampled_from([CORE, SOURCE, ("127.0.0.1", 16998)]),
    stream=st.booleans(),
)
def test_no_response_the_edge_did_not_produce_leaves_it(
    status: int, vias: list[bytes], one_line: bool, body: bytes, source: tuple[str, int],
    stream: bool,
) -> None:  # fmt: skip
    edge = Edge(SipConfig(), [UDP, TCP])
    snap = with_secrets(make_snapshot(), "a" * 64)
    # The genuine Vias below ours all name 192.0.2.7:40000 with a z9hG4bK-g branch; drawn
    # Vias never do, so a genuine top of ours is never followed by its own next Via here.
    via_lines = [b"Via: " + b", ".join(vias)] if one_line else [b"Via: " + v for v in vias]
    data = b"\r\n".join(
        [
            b"SIP/2.0 %d X" % status,
            *via_lines,
            b"From: <sip:a@b.example>;tag=1",
            b"To: <sip:c@voip.example.com>;tag=2",
            b"Call-ID: prop",
            b"CSeq: 1 INVITE",
            b"Content-Length: %d" % len(body),
            b"",
            body,
        ]
    )
    listener = TCP if stream else UDP
    assert edge.receive(data, Arrival(listener, source, 1 if stream else None), snap) == ()
    assert edge.stats.relayed == 0


# -- 3. loops ---------------------------------------------------------------------------------


def test_the_issue_repro_a_thousand_vias_naming_the_edge_cost_one_parse(
    edge: Edge, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = message_module.parse_via

    def counted(value: bytes, start: int = 0) -> message_module.Via:
        nonlocal calls
        calls += 1
        return real(value, start)

    monkeypatch.setattr(message_module, "parse_via", counted)
    monkeypatch.setattr(edge_module, "parse_via", counted)
    monkeypatch.setattr(keepalive_module, "parse_via", counted)
    vias = b", ".join([b"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKszdead"] * 1000)
    tail = (
        b"\r\nFrom: <sip:a@b.example>;tag=1\r\nTo: <sip:c@voip.example.com>;tag=2\r\n"
        b"Call-ID: loop\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    response = b"SIP/2.0 200 OK\r\nVia: " + vias + tail
    assert 45_000 < len(response) < 65_000  # the issue's 47 KB datagram
    assert edge.receive(response, Arrival(UDP, ("203.0.113.66", 5060)), snapshot) == ()
    assert calls <= 2 and edge.stats.relayed == 0
    calls = 0
    req = (
        f"INVITE {INVITE_URI} SIP/2.0\r\nVia: ".encode()
        + vias.replace(b"z9hG4bKszdead", b"z9hG4bK-x")
        + b"\r\nMax-Forwards: 70"
        + tail.replace(b";tag=2", b"")
    )
    send, reply = one(edge.receive(req, Arrival(UDP, ("203.0.113.66", 5060)), snapshot))
    assert isinstance(reply, Response) and reply.status == 483
    assert send.host == "203.0.113.66"  # the source address (§18.2.2), whatever the Vias say
    assert calls <= MAX_VIAS + 3


def test_exactly_max_vias_is_still_forwarded(edge: Edge, snapshot: Snapshot) -> None:
    vias = ", ".join(f"SIP/2.0/UDP 192.0.2.{n % 250 + 1};branch=z9hG4bK-{n}" for n in range(70))
    too_many = invite(via=vias + ", SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-x")
    assert status_of(edge.receive(too_many, Arrival(UDP, SOURCE), snapshot)) == 483
    forward(edge, snapshot, invite(via=vias))


def test_a_request_that_passed_the_edge_before_gets_482(edge: Edge, snapshot: Snapshot) -> None:
    sent = forward(edge, snapshot, invite())
    # The core (or a proxy behind it) hands the request back unchanged: a loop.
    looped = parse_message(sent.data)
    assert isinstance(looped, Request)
    back = sent.data.replace(b"X-Sipzone-Tenant: acme\r\n", b"")
    _, reply = one(edge.receive(back, Arrival(UDP, ("192.0.2.50", 5060)), snapshot))
    assert isinstance(reply, Response) and (reply.status, reply.reason) == (482, b"Loop Detected")
    assert edge.stats.requests[("INVITE", "loop")] == 1
    # With another Request-URI it is a spiral (§16.3 step 4), and goes on.
    spiral = back.replace(INVITE_URI.encode(), b"sip:+4930999@cust42.teams.example.com", 1)
    send, fwd = one(edge.receive(spiral, Arrival(UDP, ("192.0.2.50", 5060)), snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == CORE


def test_an_upstream_naming_the_edge_itself_gets_482_not_a_self_send(edge: Edge) -> None:
    snap = with_secrets(make_snapshot(upstream="sip:127.0.0.1:5070"), "a" * 64)
    assert status_of(edge.receive(invite(), Arrival(UDP, SOURCE), snap)) == 482
    ack = request(method="ACK", uri=INVITE_URI, to=f"<{INVITE_URI}>;tag=x")
    assert edge.receive(ack, Arrival(UDP, SOURCE), snap) == ()


def test_nothing_is_ever_sent_to_our_own_listeners(edge: Edge, snapshot: Snapshot) -> None:
    # A request whose Via names our own port at a source on our address: no answer to us.
    data = request(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-self")
    assert edge.receive(data, Arrival(UDP, ("127.0.0.1", 40001)), snapshot) == ()
    # A datagram from our own socket (spoofed) is not answered on either path.
    ping = request(via="SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bK-spoof")
    assert edge.receive(ping, Arrival(UDP, ("127.0.0.1", 5070)), snapshot) == ()
    assert fast_path(edge, ping, Arrival(UDP, ("127.0.0.1", 5070)), snapshot) == ()
    # A genuine response whose client was ourselves (stamped from our own port) is not relayed.
    sent = forward(edge, snapshot, invite(via="SIP/2.0/UDP 10.9.9.9:5060;rport;branch=z9hG4bK-s"))
    answer = response_to(sent.data).replace(b"received=192.0.2.7;rport=40000", b"x=1")
    assert edge.receive(answer, Arrival(UDP, CORE), snapshot) == ()


# -- 5. a Via port above 65535 ----------------------------------------------------------------


def test_a_via_port_above_65535_is_a_400_to_the_source(edge: Edge, snapshot: Snapshot) -> None:
    for via in ("SIP/2.0/UDP 192.0.2.7:70000;branch=z9hG4bK-p", "SIP/2.0/UDP 192.0.2.7:99999"):
        data = request(via=via)
        assert (
            fast_path(edge, data, Arrival(UDP, SOURCE), snapshot) is None
        )  # the fast path declines
        send, reply = one(edge.receive(data, Arrival(UDP, SOURCE), snapshot))
        assert isinstance(reply, Response) and reply.status == 400
        assert b"65535" in reply.reason
        assert (send.host, send.port) == SOURCE
        invite_data = invite(via=via)
        assert status_of(edge.receive(invite_data, Arrival(UDP, SOURCE), snapshot)) == 400


# -- 6. a Route to our address but another port is not ours -----------------------------------


@pytest.mark.parametrize(
    ("route", "ours"),
    [
        ("<sip:127.0.0.1:5070;lr>", True),
        ("<sip:127.0.0.1:6000;lr>", False),  # our address, another port
        ("<sip:127.0.0.1;lr>", False),  # no port: 5060, not ours
        ("<sip:cust42.teams.example.com;lr>", True),  # a name we serve, no port
        ("<sip:cust42.teams.example.com:5070;lr>", True),  # ... or our port
        ("<sip:cust42.teams.example.com:6000;lr>", False),  # ... but not another
        ("<sip:192.0.2.99:5070;lr>", False),  # our port, another address
    ],
)
def test_a_route_is_ours_by_host_and_port(
    edge: Edge, snapshot: Snapshot, route: str, ours: bool
) -> None:
    bye = request(
        method="BYE",
        uri="sip:caller@192.0.2.7:40000",
        to="<sip:caller@192.0.2.7>;tag=f1",
        via="SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-uas",
        extra=f"Route: {route}",
    )
    send, fwd = one(edge.receive(bye, Arrival(UDP, CORE), snapshot))
    if ours:  # popped: on by the Request-URI
        assert isinstance(fwd, Request) and b"Route" not in fwd.fields
        assert (send.host, send.port) == SOURCE
    elif "cust42" in route:  # kept as the next hop, a name we do not look up
        assert isinstance(fwd, Response) and fwd.status == 502
    else:  # kept, and the next hop
        assert isinstance(fwd, Request) and fwd.fields[b"Route"] == route.encode()
        assert f"{send.host}:{send.port}" == route.split("sip:")[1].split(";")[0] + (
            "" if route.count(":") == 2 else ":5060"
        )


# -- 2. names in a peer's message are never looked up ------------------------------------------


def test_an_in_dialog_request_to_a_name_we_do_not_know_gets_502(
    edge: Edge, snapshot: Snapshot
) -> None:
    bye = request(
        method="BYE",
        uri="sip:caller@phone.evil.example:5060",
        to="<sip:caller@192.0.2.7>;tag=f1",
        via="SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-uas",
    )
    assert status_of(edge.receive(bye, Arrival(UDP, CORE), snapshot)) == 502
    assert edge.stats.requests[("BYE", "unresolvable")] == 1
    ack = bye.replace(b"BYE", b"ACK")
    assert edge.receive(ack, Arrival(UDP, CORE), snapshot) == ()
    # A name among the configured upstreams, as the transport resolved it, is fine.
    snap = with_secrets(make_snapshot(upstream="sip:core.example.net:5999"), "a" * 64)
    edge.set_upstreams({"sip:core.example.net:5999": Choice.of(Target("udp", "127.0.0.1", 5999))})
    bye = bye.replace(b"phone.evil.example", b"core.example.net")
    send, _ = one(edge.receive(bye, Arrival(UDP, CORE), snap))
    assert (send.host, send.port) == ("127.0.0.1", 5060)


def test_only_configured_upstreams_are_the_core(edge: Edge, snapshot: Snapshot) -> None:
    """The issue's repro: a Via host name made its sender a trusted upstream.  Now only the
    configuration says who the core is, whatever responses or Vias arrive."""
    attacker = ("127.0.0.1", 16999)
    forged = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKszdead\r\n"
        b"Via: SIP/2.0/UDP localhost:16999;branch=z9hG4bKv\r\n"
        b"From: <sip:a@b.example>;tag=1\r\nTo: <sip:c@d.example>;tag=2\r\n"
        b"Call-ID: f\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert edge.receive(forged, Arrival(UDP, attacker), snapshot) == ()
    relay = request(
        method="MESSAGE",
        uri="sip:victim@127.0.0.1:16998",
        to="<sip:victim@127.0.0.1>;tag=x",
        via="SIP/2.0/UDP localhost:16999;branch=z9hG4bK-r",
    )
    send, reply = one(edge.receive(relay, Arrival(UDP, attacker), snapshot))
    assert isinstance(reply, Response) and reply.status == 403  # a client's, not the core's
    assert (send.host, send.port) == attacker
    assert edge.upstream_uris(snapshot) == ({"sip:127.0.0.1:5999"}, set())


def test_an_ipv6_client_behind_nat_gets_its_responses(edge: Edge, snapshot: Snapshot) -> None:
    """The stamp writes received=IPv6 without brackets (RFC 3261 §20.42, RFC 5118 §4.5); the
    Via grammar and the way back must take it."""
    source = ("2001:db8::7", 40000)
    data = invite(via="SIP/2.0/UDP [2001:db8::1]:5062;rport;branch=z9hG4bK-v6")
    send, fwd = one(edge.receive(data, Arrival(UDP, source), snapshot))
    assert isinstance(fwd, Request) and (send.host, send.port) == CORE
    below = fwd.fields[b"Via"].split(b", ")[1]
    assert below.endswith(b";received=2001:db8::7;rport=40000")
    relayed, reply = one(edge.receive(response_to(send.data), Arrival(UDP, CORE), snapshot))
    assert (relayed.host, relayed.port) == source
    assert isinstance(reply, Response) and reply.fields[b"Via"] == below


@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_the_precomputed_mac_is_hmac_sha256(key: bytes, message: bytes) -> None:
    """Branches and flow tokens stay HMAC-SHA256 (RFC 2104) whatever computes them, so nodes of
    different versions keep vouching for each other's branches during an upgrade."""
    assert Mac(key).digest(message) == hmac.digest(key, message, "sha256")
