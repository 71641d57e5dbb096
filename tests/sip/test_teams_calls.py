"""Whole calls between the core and Microsoft Teams through the edge, on real sockets: the core a
UDP socket of the test, Microsoft the simulated SIP proxies of tests/sip/msproxy.py (mutual
TLS, every rule of Direction Routing checked on every message they receive).  Calls both ways
for a customer under the wildcard and for one added a moment before, hang-ups from either side,
failover to sip2, refusals that forward nothing, no sips: and no Replaces toward Teams, and
dialogs started by either side that outlive an edge restart."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.model.trunks import TrunkState
from sipzone.sip import BRANCH_SECRET, SipConfig
from sipzone.sip.message import Request, Response, parse_message, split_addresses
from sipzone.sip.transport import start_sip
from tests.sip.conftest import EdgeThread, free_port
from tests.sip.msproxy import MicrosoftProxy, Sender
from tests.sip.test_trunks import Teams, within
from tests.sip.test_trunks import teams as teams  # the fixture
from tests.tlscerts import Issued

SECRET = "e" * 64
CUSTOMER = "cust42.teams.example.com"


class Core:
    """The core: a UDP socket that reads what the edge sends and sends what the test says."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]

    def recv(self) -> Request | Response:
        return parse_message(self.sock.recv(65536))

    def silent(self, seconds: float = 0.5) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def send(self, data: str, port: int) -> None:
        self.sock.sendto(data.encode(), ("127.0.0.1", port))


class EdgePorts(Protocol):
    """Where the edge listens: what the call helpers need of it, in a thread or a process."""

    @property
    def udp(self) -> int: ...

    @property
    def tls(self) -> int: ...


@dataclasses.dataclass
class Call:
    teams: Teams
    core: Core
    core2: Core
    edge: EdgeThread
    config: SipConfig

    @property
    def udp(self) -> int:
        return self.edge.port("udp")

    @property
    def tls(self) -> int:
        return self.edge.port("tls")


def snapshot(
    teams: Teams, core: Core, core2: Core, revision: int = 1, cust99: bool = False
) -> Snapshot:
    base = teams.snapshot(revision)
    tenants = [Tenant("acme", "provider", upstream=f"sip:127.0.0.1:{core.port}")]
    rules = [("*.teams.example.com", "acme")]
    if cust99:  # a customer of its own, with its own core, added live
        tenants.append(Tenant("customer99", "acme", upstream=f"sip:127.0.0.1:{core2.port}"))
        rules.append(("cust99.teams.example.com", "customer99"))
    built = Snapshot.build(revision, TenancyTree(tenants), rules)
    return dataclasses.replace(
        built, certificates=base.certificates, trunks=base.trunks, settings={BRANCH_SECRET: SECRET}
    )


@pytest.fixture
def call(teams: Teams) -> Iterator[Call]:
    core, core2 = Core(), Core()
    udp, tls = free_port(), free_port(socket.SOCK_STREAM)
    config = dataclasses.replace(
        teams.config(), listen=(f"udp:127.0.0.1:{udp}", f"tls:127.0.0.1:{tls}")
    )
    edge = EdgeThread(SnapshotHolder(snapshot(teams, core, core2)), config).start()
    made = Call(teams, core, core2, edge, config)
    yield made
    made.edge.stop()
    core.sock.close()
    core2.sock.close()


def core_invite(
    call: Call, customer: str = CUSTOMER, n: int = 1, scheme: str = "sip", extra: str = ""
) -> str:
    c = call.core.port
    return (
        f"INVITE {scheme}:+4930123@sip.pstnhub.microsoft.com;user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{c};branch=z9hG4bK-out{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{scheme}:+4940999@{customer}>;tag=c{n}\r\n"
        "To: <sip:+4930123@sip.pstnhub.microsoft.com>\r\n"
        f"Call-ID: out-{n}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <{scheme}:core@127.0.0.1:{c}>, <sip:second@127.0.0.1:{c}>\r\n"
        f"Supported: replaces, timer\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    )


def in_dialog(method: str, uri: bytes, routes: list[bytes], via: str, frm: bytes, to: bytes,
              call_id: bytes, cseq: int, extra: str = "") -> str:  # fmt: skip
    route = "".join(f"Route: {r.decode()}\r\n" for r in routes)
    return (
        f"{method} {uri.decode()} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n{route}"
        f"From: {frm.decode()}\r\nTo: {to.decode()}\r\nCall-ID: {call_id.decode()}\r\n"
        f"CSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )


def uri_of(address: bytes) -> bytes:
    return address.split(b"<", 1)[1].split(b">", 1)[0]


def outbound_call(call: Call, proxy: MicrosoftProxy, n: int = 1) -> tuple[Response, list[bytes]]:
    """The core calls +4930123 for cust42: the INVITE reaches ``proxy``, the 200 the core."""
    call.core.send(core_invite(call, n=n), call.udp)
    within(5, lambda: any(r.fields[b"Call-ID"] == b"out-%d" % n for r in proxy.requests("INVITE")))
    [invite] = [r for r in proxy.requests("INVITE") if r.fields[b"Call-ID"] == b"out-%d" % n]
    # Microsoft's view: the customer FQDN in the one Contact and both Record-Routes.
    contact = invite.fields[b"Contact"]
    assert contact.startswith(
        b"<sip:core@%s:%d;transport=tls;sz-alias=" % (CUSTOMER.encode(), call.tls)
    )
    assert b"second" not in contact and invite.fields[b"Supported"] == b"timer"
    assert invite.uri == b"sip:+4930123@sip.pstnhub.microsoft.com;user=phone"
    assert invite.fields[b"x-ms-sbc"].startswith(b"sipzone/")
    assert b"X-Sipzone" not in invite.start_line + b"".join(v for _, v, _ in invite.headers())
    ok = call.core.recv()
    assert isinstance(ok, Response) and ok.status == 200
    rrs = split_addresses(ok.fields[b"Record-Route"])
    # The core's view: our core-facing entry is our address again.
    assert rrs[0].startswith(b"<sip:%s:%d;transport=tls;lr>" % (CUSTOMER.encode(), call.tls))
    assert (
        rrs[1].startswith(b"<sip:szf1.") and b"@127.0.0.1:%d;transport=udp;lr>" % call.udp in rrs[1]
    )
    return ok, rrs


def core_in_dialog(call: Call, ok: Response, rrs: list[bytes], method: str, cseq: int) -> None:
    via = f"SIP/2.0/UDP 127.0.0.1:{call.core.port};branch=z9hG4bK-{method}{cseq};rport"
    data = in_dialog(method, uri_of(ok.fields[b"Contact"]), list(reversed(rrs)), via,
                     ok.fields[b"From"], ok.fields[b"To"], ok.fields[b"Call-ID"], cseq)  # fmt: skip
    call.core.send(data, call.udp)


def test_outbound_call_hung_up_by_the_core(call: Call) -> None:
    sip = call.teams.proxies[0]
    within(5, lambda: len(sip.options()) >= 1)
    ok, rrs = outbound_call(call, sip)
    core_in_dialog(call, ok, rrs, "ACK", 1)
    within(5, lambda: len(sip.requests("ACK")) == 1)
    core_in_dialog(call, ok, rrs, "BYE", 2)
    within(5, lambda: len(sip.requests("BYE")) == 1)
    bye_ok = call.core.recv()
    assert isinstance(bye_ok, Response) and bye_ok.status == 200
    assert sip.violations == []


def test_outbound_call_hung_up_by_teams_reaches_the_cores_contact(call: Call) -> None:
    sip = call.teams.proxies[0]
    within(5, lambda: len(sip.options()) >= 1)
    _, _ = outbound_call(call, sip)
    [invite] = sip.requests("INVITE")
    routes = split_addresses(invite.fields[b"Record-Route"])  # the UAS's route set, in order
    via = f"SIP/2.0/TLS sip-du-a-eu.pstnhub.microsoft.com:{sip.port};branch=z9hG4bK-msbye"
    to = invite.fields[b"From"]
    frm = invite.fields[b"To"] + b";tag=ms1"
    sip.send(in_dialog("BYE", uri_of(invite.fields[b"Contact"]), routes, via, frm, to,
                       invite.fields[b"Call-ID"], 7).encode())  # fmt: skip
    bye = call.core.recv()
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert bye.uri == b"sip:core@127.0.0.1:%d" % call.core.port  # our alias, undone
    assert bye.fields[b"x-sipzone-tenant"] == b"acme"
    ok = "SIP/2.0 200 OK\r\n" + "".join(
        f"{n.decode()}: {v.decode()}\r\n" for k, n, v in bye.headers()
        if k in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")
    ) + "Content-Length: 0\r\n\r\n"  # fmt: skip
    call.core.send(ok, call.udp)
    within(5, lambda: len(sip.responses_to(invite.fields[b"Call-ID"])) == 1)
    assert sip.violations == []


def test_sip_down_the_call_goes_to_sip2(call: Call) -> None:
    sip, sip2, _ = call.teams.proxies
    sip.unavailable = 60
    within(8, lambda: len(sip.options()) >= 1 and len(sip2.options()) >= 1)
    time.sleep(0.3)  # the 503 handled
    outbound_call(call, sip2)
    assert sip.requests("INVITE") == []
    assert sip2.violations == []


def test_a_customer_not_served_gets_403_and_nothing_goes_to_teams(call: Call) -> None:
    call.core.send(core_invite(call, customer="nobody.example.net", n=5), call.udp)
    refused = call.core.recv()
    assert isinstance(refused, Response) and refused.status == 403
    time.sleep(0.3)
    assert all(p.requests("INVITE") == [] for p in call.teams.proxies)


def test_no_sips_and_no_replaces_offer_reach_teams(call: Call) -> None:
    sip = call.teams.proxies[0]
    within(5, lambda: len(sip.options()) >= 1)
    pai = f"P-Asserted-Identity: <sips:+4940999@{CUSTOMER}>\r\n"
    call.core.send(core_invite(call, n=3, scheme="sips", extra=pai), call.udp)
    within(5, lambda: len(sip.requests("INVITE")) == 1)
    [invite] = sip.requests("INVITE")
    tls = b";transport=tls"
    assert invite.uri == b"sip:+4930123@sip.pstnhub.microsoft.com;user=phone" + tls
    assert invite.fields[b"From"] == b"<sip:+4940999@%s%s>;tag=c3" % (CUSTOMER.encode(), tls)
    assert invite.fields[b"P-Asserted-Identity"] == b"<sip:+4940999@%s%s>" % (
        CUSTOMER.encode(),
        tls,
    )
    assert invite.fields[b"Contact"].startswith(
        b"<sip:core@%s:%d%s;" % (CUSTOMER.encode(), call.tls, tls)
    )
    assert invite.fields[b"Supported"] == b"timer"
    ok = call.core.recv()
    assert isinstance(ok, Response) and ok.status == 200
    assert sip.violations == []


@pytest.mark.parametrize("header", ["Replaces: abc@core;to-tag=1;from-tag=2", "Require: replaces"])
def test_a_request_with_replaces_for_teams_is_answered_420(call: Call, header: str) -> None:
    call.core.send(core_invite(call, n=4, extra=header + "\r\n"), call.udp)
    refused = call.core.recv()
    assert isinstance(refused, Response) and refused.status == 420
    assert refused.fields[b"Unsupported"] == b"replaces"
    assert call.core.silent()  # no 200: nothing went on
    assert all(p.requests("INVITE") == [] for p in call.teams.proxies)


def test_an_answer_toward_teams_offers_no_replaces_and_no_sips(call: Call) -> None:
    sip = call.teams.proxies[0]
    conn = sip.dial(call.tls, CUSTOMER, _ms_cert(call))
    conn.sendall(ms_invite(call, CUSTOMER, 5, sip).encode())
    invite = call.core.recv()
    assert isinstance(invite, Request)
    extra = f"Supported: replaces, 100rel\r\nP-Asserted-Identity: sips:+4930123@{CUSTOMER}\r\n"
    call.core.send(answer_ok(invite, f"sips:core@127.0.0.1:{call.core.port}", extra), call.udp)
    within(5, lambda: len(sip.responses_to(b"in-5")) == 1)
    [ok] = sip.responses_to(b"in-5")
    assert ok.fields[b"Supported"] == b"100rel"
    assert (
        ok.fields[b"P-Asserted-Identity"] == b"<sip:+4930123@%s;transport=tls>" % CUSTOMER.encode()
    )
    assert ok.fields[b"Contact"].startswith(
        b"<sip:core@%s:%d;transport=tls;" % (CUSTOMER.encode(), call.tls)
    )
    assert sip.violations == []


def ms_invite(
    call: EdgePorts, customer: str, n: int, proxy: MicrosoftProxy, record_route: str | None = None
) -> str:
    """Microsoft's INVITE; its Record-Route names ``record_route`` (host:port), by default a
    proxy of Microsoft's that is no trunk target (as its real ones are)."""
    record_route = record_route or f"sip-du-a-eu.pstnhub.microsoft.com:{proxy.port}"
    return (
        f"INVITE sip:+4930123@{customer}:{call.tls};user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS sip-du-a-eu.pstnhub.microsoft.com:{proxy.port};branch=z9hG4bK-in{n}\r\n"
        f"Record-Route: <sip:{record_route};transport=tls;lr>\r\n"
        "Max-Forwards: 69\r\n"
        f"From: <sip:+15551234@sip.pstnhub.microsoft.com;user=phone>;tag=m{n}\r\n"
        f"To: <sip:+4930123@{customer};user=phone>\r\n"
        f"Call-ID: in-{n}\r\nCSeq: 1 INVITE\r\nContact: <{proxy.contact}>\r\n"
        "Content-Length: 0\r\n\r\n"
    )


def answer_ok(invite: Request, contact: str, extra: str = "") -> str:
    lines = [f"{n.decode()}: {v.decode()}" for k, n, v in invite.headers()
             if k in (b"Via", b"Record-Route", b"From", b"Call-ID", b"CSeq")]  # fmt: skip
    lines.append(f"To: {invite.fields[b'To'].decode()};tag=core1")
    return (
        "SIP/2.0 200 OK\r\n"
        + "\r\n".join(lines)
        + f"\r\nContact: <{contact}>\r\n{extra}Content-Length: 0\r\n\r\n"
    )


@dataclasses.dataclass
class Inbound:
    """A call Microsoft made, answered: the INVITE as the core got it, the 200 as Microsoft
    got it, and Microsoft's route set (the 200's Record-Routes reversed, less its own)."""

    invite: Request
    ok: Response
    routes: list[bytes]


def inbound_call(call: EdgePorts, core: Core, conn: Sender, customer: str, n: int,
                 proxy: MicrosoftProxy, record_route: str | None = None) -> Inbound:  # fmt: skip
    """Microsoft calls +4930123 at ``customer`` over ``conn``: INVITE, the core's 200, ACK."""
    conn.sendall(ms_invite(call, customer, n, proxy, record_route).encode())
    invite = core.recv()
    assert isinstance(invite, Request) and invite.method == "INVITE"
    core.send(answer_ok(invite, f"sip:core@127.0.0.1:{core.port}"), call.udp)
    within(5, lambda: len(proxy.responses_to(b"in-%d" % n)) == 1)
    [ok] = proxy.responses_to(b"in-%d" % n)
    assert ok.status == 200
    assert ok.fields[b"Contact"].startswith(
        b"<sip:core@%s:%d;transport=tls;sz-alias=" % (customer.encode(), call.tls)
    )
    rrs = split_addresses(ok.fields[b"Record-Route"])
    assert all(customer.encode() in rr for rr in rrs[:2]), rrs
    routes = list(reversed(rrs))[1:]
    via = f"SIP/2.0/TLS sip-du-a-eu.pstnhub.microsoft.com:{proxy.port};branch=z9hG4bK-ack{n}"
    conn.sendall(in_dialog("ACK", uri_of(ok.fields[b"Contact"]), routes, via, ok.fields[b"From"],
                           ok.fields[b"To"], ok.fields[b"Call-ID"], 1).encode())  # fmt: skip
    ack = core.recv()
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == b"sip:core@127.0.0.1:%d" % core.port  # our alias, undone
    return Inbound(invite, ok, routes)


def core_request(call: EdgePorts, core: Core, call_in: Inbound, method: str, cseq: int) -> None:
    """The core (the UAS of ``call_in``) sends ``method`` in the dialog, by the route set it
    learnt from the INVITE's Record-Routes, to Microsoft's Contact."""
    invite, ok = call_in.invite, call_in.ok
    via = f"SIP/2.0/UDP 127.0.0.1:{core.port};branch=z9hG4bK-c{method}{cseq};rport"
    contact = f"Contact: <sip:core@127.0.0.1:{core.port}>\r\n" if method == "INVITE" else ""
    core.send(in_dialog(method, uri_of(invite.fields[b"Contact"]),
                        split_addresses(invite.fields[b"Record-Route"]), via, ok.fields[b"To"],
                        ok.fields[b"From"], ok.fields[b"Call-ID"], cseq, contact),
              call.udp)  # fmt: skip


def teams_request(conn: Sender, call_in: Inbound, method: str, cseq: int, port: int) -> None:
    """Microsoft (the UAC of ``call_in``) sends ``method`` in the dialog over ``conn``."""
    ok = call_in.ok
    via = f"SIP/2.0/TLS sip-du-a-eu.pstnhub.microsoft.com:{port};branch=z9hG4bK-{method}{cseq}"
    conn.sendall(in_dialog(method, uri_of(ok.fields[b"Contact"]), call_in.routes, via,
                           ok.fields[b"From"], ok.fields[b"To"], ok.fields[b"Call-ID"],
                           cseq).encode())  # fmt: skip


def core_answers(call: EdgePorts, core: Core, method: str) -> Request:
    """The core receives ``method`` and answers it 200."""
    request = core.recv()
    assert isinstance(request, Request) and request.method == method
    core.send(answer_ok(request, f"sip:core@127.0.0.1:{core.port}").replace("tag=core1", "tag=x"),
              call.udp)  # fmt: skip
    return request


def core_gets_200(core: Core, method: str) -> None:
    answer = core.recv()
    assert isinstance(answer, Response) and answer.status == 200
    assert answer.fields[b"CSeq"].endswith(method.encode())


@pytest.mark.parametrize("customer", [CUSTOMER, "cust99.teams.example.com"])
def test_inbound_call_from_teams_both_hang_ups(call: Call, customer: str) -> None:
    sip = call.teams.proxies[0]
    core = call.core
    if customer != CUSTOMER:  # added a moment before the call, no restart
        call.edge.publish(snapshot(call.teams, call.core, call.core2, revision=2, cust99=True))
        core = call.core2
    conn = sip.dial(call.tls, customer, _ms_cert(call))
    for n, hangup in ((1, "core"), (2, "teams")):
        call_in = inbound_call(call, core, conn, customer, n, sip)
        tenant = b"acme" if customer == CUSTOMER else b"customer99"
        assert call_in.invite.fields[b"x-sipzone-tenant"] == tenant
        assert call_in.invite.uri.startswith(b"sip:+4930123@%s:" % customer.encode())
        if hangup == "core":
            core_request(call, core, call_in, "BYE", 2)
            within(
                5,
                lambda n=n: any(r.fields[b"Call-ID"] == b"in-%d" % n for r in sip.requests("BYE")),
            )  # type: ignore[misc]
            core_gets_200(core, "BYE")
        else:
            teams_request(conn, call_in, "BYE", 2, sip.port)
            core_answers(call, core, "BYE")
            within(5, lambda n=n: len(sip.responses_to(b"in-%d" % n)) == 2)  # type: ignore[misc]
    assert sip.violations == []


def restart(call: Call) -> None:
    """Stop the edge (its connections close with it) and start another on the same ports."""
    call.edge.stop()
    call.edge = EdgeThread(call.edge.holder, call.config).start()


@pytest.mark.parametrize("hop", ["unconfigured", "sip2"])
def test_a_dialog_teams_started_outlives_an_edge_restart(call: Call, hop: str) -> None:
    # Microsoft's Record-Route names a proxy that is no trunk target (the first usable one
    # takes the core's requests then), or sip2, which is one (sip2 takes them).
    sip, sip2, _ = call.teams.proxies
    within(5, lambda: len(sip.options()) >= 1 and len(sip2.options()) >= 1)
    back = sip2 if hop == "sip2" else sip
    record_route = f"{sip2.name}:{sip2.port}" if hop == "sip2" else None
    call_in = inbound_call(call, call.core, sip.dial(call.tls, CUSTOMER, _ms_cert(call)), CUSTOMER,
                           1, sip, record_route)  # fmt: skip
    restart(call)
    # The core's re-INVITE, its ACK and its BYE reach Microsoft's listening address over one
    # new mutual-TLS connection; the answers reach the core.
    core_request(call, call.core, call_in, "INVITE", 2)
    core_gets_200(call.core, "INVITE")
    core_request(call, call.core, call_in, "ACK", 2)
    core_request(call, call.core, call_in, "BYE", 3)
    core_gets_200(call.core, "BYE")
    within(5, lambda: len(back.requests("ACK")) == 1)
    received = [r for r in back.received if r.request.fields[b"Call-ID"] == b"in-1"]
    assert [r.request.method for r in received] == ["INVITE", "ACK", "BYE"]
    assert len({r.conn for r in received}) == 1
    assert all("*.teams.example.com" in r.client_names for r in received)  # our certificate
    reinvite = received[0].request
    assert reinvite.fields[b"Contact"].startswith(
        b"<sip:core@%s:%d;transport=tls;sz-alias=" % (CUSTOMER.encode(), call.tls)
    )
    if back is sip2:
        assert [r for r in sip.received if r.request.method != "OPTIONS"] == []
    assert sip.violations == [] and sip2.violations == []


def test_teams_hangs_up_after_an_edge_restart(call: Call) -> None:
    sip = call.teams.proxies[0]
    call_in = inbound_call(call, call.core, sip.dial(call.tls, CUSTOMER, _ms_cert(call)), CUSTOMER,
                           1, sip)  # fmt: skip
    restart(call)
    conn = sip.dial(call.tls, CUSTOMER, _ms_cert(call))  # Microsoft connects again
    teams_request(conn, call_in, "BYE", 2, sip.port)
    bye = core_answers(call, call.core, "BYE")
    assert bye.uri == b"sip:core@127.0.0.1:%d" % call.core.port
    within(5, lambda: [r.status for r in sip.responses_to(b"in-1")] == [200, 200])
    assert sip.violations == []


def test_a_customer_not_under_any_wildcard_is_refused(call: Call) -> None:
    sip = call.teams.proxies[0]
    conn = sip.dial(call.tls, CUSTOMER, _ms_cert(call))
    conn.sendall(ms_invite(call, "cust42.other.example.net", 9, sip).encode())
    within(5, lambda: len(sip.responses_to(b"in-9")) == 1)
    assert sip.responses_to(b"in-9")[0].status == 403
    assert call.core.silent()


def test_a_dialog_outlives_an_edge_restart(call: Call) -> None:
    sip = call.teams.proxies[0]
    within(5, lambda: len(sip.options()) >= 1)
    ok, rrs = outbound_call(call, sip)
    restart(call)
    core_in_dialog(call, ok, rrs, "BYE", 2)
    within(8, lambda: len(sip.requests("BYE")) == 1)
    bye_ok = call.core.recv()
    assert isinstance(bye_ok, Response) and bye_ok.status == 200
    assert sip.violations == []


def _ms_cert(call: Call) -> Issued:
    """Microsoft's certificate (sip.pstnhub.microsoft.com), for the connections it opens."""
    return call.teams.proxies[0].cert


def test_a_worker_that_does_not_probe_fails_over_by_the_stored_view(call: Call) -> None:
    # What the probing worker of this node stored: sip answered 503 for the next minute.
    sip, sip2, _ = call.teams.proxies
    now = datetime.now(UTC)
    down = TrunkState("teams", sip.uri, False, "503 Service Unavailable", 1.0, now, now,
                      now + timedelta(seconds=60))  # fmt: skip
    elsewhere = dataclasses.replace(down, target=sip2.uri)  # another node's view: not ours

    def seen() -> list[tuple[str, TrunkState]]:
        return [(socket.gethostname(), down), ("other-node", elsewhere)]

    call.edge.stop()
    config = dataclasses.replace(call.config, probe_trunks=False)
    call.edge = EdgeThread(call.edge.holder, config)
    call.edge.service = call.edge.call(start_sip(config, call.edge.holder, None, seen))
    sip.received.clear()
    edge = call.edge.service.edge
    assert edge is not None
    within(5, lambda: ("teams", sip.uri) in edge.teams.health)
    assert ("teams", sip2.uri) not in edge.teams.health
    outbound_call(call, sip2)
    assert sip.received == []  # neither OPTIONS nor the call from a worker that only reads


@dataclasses.dataclass(frozen=True)
class Served:
    """The ports of a `sipzone serve` process."""

    udp: int
    tls: int


def test_a_dialog_teams_started_outlives_a_restart_of_the_serve_process(
    teams: Teams, cli: Callable[..., Any], serve: Callable[..., Any]
) -> None:
    core = Core()
    try:
        cli("init", check=True)
        cert = teams.teams
        cli("cert", "add", "teams", "--cert", str(cert.chain), "--key", str(cert.key), check=True)
        cli("zone", "add", "example.com", check=True)
        cli("tenant", "add", "acme", "--upstream", f"sip:127.0.0.1:{core.port}", check=True)
        cli("domain", "add", "*.teams.example.com", "--owner", "acme", check=True)
        targets = [a for p in teams.proxies for a in ("--target", p.uri)]
        cli("trunk", "add", "teams", *targets, "--base", "teams.example.com",
            "--profile", "teams", check=True)  # fmt: skip
        edge = Served(free_port(), free_port(socket.SOCK_STREAM))
        pins = [a for p in teams.proxies for a in ("--sip-host", f"{p.name}={p.host}")]
        args = ("--sip", f"udp:127.0.0.1:{edge.udp},tls:127.0.0.1:{edge.tls}",
                "--tls-upstream-ca", teams.ca_file, *pins)  # fmt: skip
        process = serve(*args)
        sip = teams.proxies[0]
        call_in = inbound_call(edge, core, sip.dial(edge.tls, CUSTOMER, sip.cert), CUSTOMER, 1, sip)
        process.stop()  # SIGTERM: its connections, Microsoft's among them, close
        serve(*args)
        core_request(edge, core, call_in, "BYE", 2)
        core_gets_200(core, "BYE")
        [bye] = [r for r in sip.received if r.request.method == "BYE"]
        assert bye.request.fields[b"Call-ID"] == b"in-1"
        assert "*.teams.example.com" in bye.client_names
        assert sip.violations == []
    finally:
        core.sock.close()
