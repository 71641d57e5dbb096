"""What resolvers see (issue 12, item 7): ECS scopes they can cache by, one address set for every
region, compressed glue, name servers that run the DNS, BADVERS with its question; asked
directly, with `dig`, through Unbound running as a recursive resolver, and through BIND
forwarding to us."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.edns
import dns.message
import dns.rrset
import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from sipzone.model.snapshot import NameServer
from tests.conftest import free_port
from tests.dns.conftest import SITE_A, SITE_B, LiveDns, dig, ip, need, net, snapshot
from tests.dns.test_truncation import eight_sites

# The case: two /24 client networks inside one /16, each a different region's.
EU = replace(SITE_A, networks=(net("127.0.0.0/24"),))
US = replace(SITE_B, networks=(net("127.0.1.0/24"),))
NEIGHBOURS = snapshot(sites=(EU, US))


def ask(
    auth: Authority, name: str, rdtype: str, subnet: tuple[str, int] | None = None
) -> tuple[dns.message.Message, int, int]:
    """(reply, its size, its ECS scope or -1) for a UDP query from loopback."""
    options = [dns.edns.ECSOption(*subnet)] if subnet else []
    query = dns.message.make_query(name, rdtype, use_edns=0, options=options, payload=4096)
    out = auth.respond(query.to_wire(), "127.0.0.1")
    assert out is not None
    reply = dns.message.from_wire(out)
    ecs = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    return reply, len(out), ecs[0].scopelen if ecs else -1


def first_target(reply: dns.message.Message) -> str:
    return str(min(reply.answer[0], key=lambda rd: rd.priority).target)


def test_a_subnet_wider_than_a_site_network_gets_the_default_order_and_a_longer_scope() -> None:
    auth = Authority(NEIGHBOURS, DnsConfig())
    srv = "_sip._udp.voip.example.com"
    # The /24s decide: each region first, for its /24 only.
    assert first_target(ask(auth, srv, "SRV", ("127.0.1.0", 24))[0]) == "site-b.example.com."
    assert ask(auth, srv, "SRV", ("127.0.1.0", 24))[2] == 24
    assert ask(auth, srv, "SRV", ("127.0.1.7", 32))[2] == 32
    # 127.0.0.0/16 holds both: the configured order, valid for the whole /16, and scope 24
    # asks for more bits (RFC 7871 §7.2.1), never the eu order cached for us clients too.
    reply, _, scope = ask(auth, srv, "SRV", ("127.0.1.0", 16))
    assert (first_target(reply), scope) == ("site-a.example.com.", 24)
    swapped = Authority(snapshot(sites=(replace(EU, order=3), US)), DnsConfig())
    reply, _, scope = ask(swapped, srv, "SRV", ("127.0.0.0", 16))
    assert (first_target(reply), scope) == ("site-b.example.com.", 24)  # the order, not eu
    # A subnet with no site network inside it is matched as before (scope = its length).
    assert ask(auth, srv, "SRV", ("10.0.0.0", 8))[2] == 8
    assert ask(auth, srv, "SRV", ("0.0.0.0", 0))[2] == 0  # "do not use my address"


def test_answers_that_are_one_set_everywhere_get_scope_zero() -> None:
    auth = Authority(snapshot(), DnsConfig())
    for name, rdtype in [
        ("voip.example.com", "A"),
        ("voip.example.com", "AAAA"),
        ("cust7.teams.example.com", "A"),
        ("voip.example.com", "NAPTR"),
        ("mail.example.com", "A"),
        ("mail.example.com", "MX"),
        ("example.com", "NS"),
        ("nope.example.com", "A"),
    ]:
        eu, _, eu_scope = ask(auth, name, rdtype, ("127.0.0.0", 24))
        us, _, us_scope = ask(auth, name, rdtype, ("198.51.100.0", 24))
        assert (eu_scope, us_scope) == (0, 0), (name, rdtype)
        assert eu.answer == us.answer, (name, rdtype)
        assert [rrset.to_text() for rrset in eu.answer] == [r.to_text() for r in us.answer]
    # SRV stays regional: each region first, scope = the subnet's.
    srv = "_sip._udp.voip.example.com"
    assert first_target(ask(auth, srv, "SRV", ("198.51.100.0", 24))[0]) == "site-b.example.com."
    assert first_target(ask(auth, srv, "SRV", ("127.0.0.0", 24))[0]) == "site-a.example.com."


def test_views_share_the_answers_that_do_not_depend_on_them() -> None:
    auth = Authority(snapshot(), DnsConfig())
    domain = auth.roles("voip.example.com")
    service = auth.roles("_sip._udp.voip.example.com")
    assert domain is not None and service is not None
    nodes = [auth._node("example.com", domain, view) for view in (0, 1, 2)]
    assert nodes[0] is nodes[1] is nodes[2]  # compiled once, under the default view
    regional = [auth._node("example.com", service, view) for view in (0, 1, 2)]
    assert len({id(node) for node in regional}) == 3


def test_glue_owners_are_compressed() -> None:
    """Exact sizes over TCP (no cut): before owners were compressed, 245, 218, 1639 and 1576
    octets; now no larger than dnspython's own rendering of the same message."""
    cases = [
        (snapshot(), "_sip._udp.voip.example.com", "SRV", 191),
        (snapshot(), "example.com", "NS", 142),
        (snapshot(sites=eight_sites()), "_sip._udp.voip.example.com", "SRV", 1063),
        (snapshot(sites=eight_sites()), "example.com", "NS", 912),
        (snapshot(), "nope.example.com", "A", 99),
    ]
    for snap, name, rdtype, size in cases:
        auth = Authority(snap, DnsConfig())
        for asked in (name, name.upper()):  # the pointers aim into the question as asked
            query = dns.message.make_query(asked, rdtype, use_edns=0)
            out = auth.respond(query.to_wire(), "127.0.0.1", tcp=True)
            assert out is not None
            reply = dns.message.from_wire(out)
            assert len(out) == size, (name, rdtype, len(out))
            assert len(out) <= len(reply.to_wire())
            assert all(len(rrset) for rrset in reply.additional)
    # Glue names are the SRV targets: their owners point at the targets' bytes.
    auth = Authority(snapshot(), DnsConfig())
    reply, _, _ = ask(auth, "_sip._udp.cust9.teams.example.com", "SRV")
    targets = {rd.target for rd in reply.answer[0]}
    assert {rrset.name for rrset in reply.additional} == targets


def test_badvers_carries_the_question() -> None:
    auth = Authority(snapshot(), DnsConfig())
    query = dns.message.make_query("VoIP.example.com", "SRV", use_edns=1)
    reply = dns.message.from_wire(auth.respond(query.to_wire(), "127.0.0.1") or b"")
    assert reply.rcode() == dns.rcode.BADVERS
    assert [(q.name.to_text(), q.rdtype) for q in reply.question] == [
        ("VoIP.example.com.", dns.rdatatype.SRV)
    ]
    assert (reply.answer, reply.authority) == ([], [])


def test_name_servers_are_the_configured_dns_hosts_with_their_glue() -> None:
    servers = (
        NameServer("ns1.example.com", (ip("192.0.2.53"), ip("2001:db8::53"))),
        NameServer("ns2.provider.example"),  # a secondary outside our zones
    )
    auth = Authority(replace(snapshot(), nameservers=servers), DnsConfig())
    reply, _, _ = ask(auth, "example.com", "NS")
    assert sorted(rd.target.to_text() for rd in reply.answer[0]) == [
        "ns1.example.com.",
        "ns2.provider.example.",
    ]
    glue = {
        (r.name.to_text(), r.rdtype): sorted(rd.to_text() for rd in r) for r in reply.additional
    }
    assert glue == {
        ("ns1.example.com.", dns.rdatatype.A): ["192.0.2.53"],
        ("ns1.example.com.", dns.rdatatype.AAAA): ["2001:db8::53"],
    }
    soa, _, _ = ask(auth, "example.com", "SOA")
    assert soa.answer[0][0].mname.to_text() == "ns1.example.com."
    assert ask(auth, "ns1.example.com", "A")[0].answer[0][0].to_text() == "192.0.2.53"
    # A store from before the setting keeps what it published: the sites' SIP hosts.
    legacy, _, _ = ask(Authority(snapshot(), DnsConfig()), "example.com", "NS")
    assert sorted(rd.target.to_text() for rd in legacy.answer[0]) == [
        "site-a.example.com.",
        "site-b.example.com.",
    ]


# -- with dig ------------------------------------------------------------------------------------


def test_dig_sees_the_scopes(live_dns: type[LiveDns]) -> None:
    port = live_dns(NEIGHBOURS).port
    wide = dig(port, "_sip._udp.voip.example.com", "SRV", "+subnet=127.0.1.0/16")
    assert "CLIENT-SUBNET: 127.0.0.0/16/24" in wide.text
    assert min(wide.rdata("SRV")).split()[3] == "site-a.example.com."
    narrow = dig(port, "_sip._udp.voip.example.com", "SRV", "+subnet=127.0.1.0/24")
    assert "CLIENT-SUBNET: 127.0.1.0/24/24" in narrow.text
    assert min(narrow.rdata("SRV")).split()[3] == "site-b.example.com."
    for name, rdtype in [
        ("voip.example.com", "A"),
        ("voip.example.com", "AAAA"),
        ("voip.example.com", "NAPTR"),
        ("mail.example.com", "A"),
    ]:
        r = dig(port, name, rdtype, "+subnet=127.0.1.0/24")
        assert r.answer and "CLIENT-SUBNET: 127.0.1.0/24/0" in r.text, (name, rdtype)
    bad = dig(port, "voip.example.com", "A", "+edns=1", "+noednsnegotiation")
    assert bad.status == "BADVERS"
    assert bad.question[:3] == ["voip.example.com.", "IN", "A"]


# -- through Unbound -----------------------------------------------------------------------------


class Unbound:
    """Unbound 1.17 as a recursive resolver on loopback, sending every question of
    example.com to sipzone's DNS (stub zone), with ECS (subnetcache), qname minimisation and
    0x20 on."""

    def __init__(self, tmp: Path, upstream: int) -> None:
        self.port = free_port()
        conf = tmp / "unbound.conf"
        conf.write_text(
            f"""server:
    interface: 127.0.0.1
    port: {self.port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{tmp}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "subnetcache iterator"
    send-client-subnet: 127.0.0.1
    max-client-subnet-ipv4: 24
    qname-minimisation: yes
    qname-minimisation-strict: no
    use-caps-for-id: yes
    harden-referral-path: no
    num-threads: 1
stub-zone:
    name: "example.com"
    stub-addr: 127.0.0.1@{upstream}
"""
        )
        self.process = subprocess.Popen(
            [need("unbound"), "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(100):  # bounded: 10 s
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"unbound exited: {self.process.stderr and self.process.stderr.read()}"
                )
            if dig(self.port, "example.com", "SOA").status == "NOERROR":
                return
            time.sleep(0.1)
        raise RuntimeError("unbound did not answer within 10 s")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def resolver(live_dns: type[LiveDns], tmp_path: Path) -> Iterator[tuple[LiveDns, Unbound]]:
    need("unbound")
    servers = (NameServer("ns1.example.com", (ip("127.0.0.1"),)),)
    sipzone = live_dns(replace(NEIGHBOURS, nameservers=servers), DnsConfig(metrics=True))
    unbound = Unbound(tmp_path, sipzone.port)
    yield sipzone, unbound
    unbound.close()


def answered(sipzone: LiveDns) -> int:
    """Responses sipzone has sent so far."""
    counts = sipzone.service.counts
    assert counts is not None
    return sum(counts.by_rcode)


def test_through_unbound(resolver: tuple[LiveDns, Unbound]) -> None:
    sipzone, unbound = resolver
    port = unbound.port
    # Everything basic, through qname minimisation and 0x20.
    a = dig(port, "Cust42.Teams.example.com", "A")
    assert (a.status, sorted(a.rdata("A"))) == ("NOERROR", ["192.0.2.10", "198.51.100.10"])
    naptr = dig(port, "voip.example.com", "NAPTR")
    assert len(naptr.rdata("NAPTR")) == 3
    assert dig(port, "nope.example.com", "A").status == "NXDOMAIN"
    assert dig(port, "example.com", "NS").rdata("NS") == ["ns1.example.com."]
    # SRV follows the client subnet Unbound passes on, and Unbound keeps one answer per /24.
    srv = "_sip._udp.voip.example.com"
    us = dig(port, srv, "SRV", "+subnet=127.0.1.0/24")
    assert min(us.rdata("SRV")).split()[3] == "site-b.example.com."
    eu = dig(port, srv, "SRV", "+subnet=127.0.0.0/24")
    assert min(eu.rdata("SRV")).split()[3] == "site-a.example.com."
    # A client that gives only /16 gets the configured order, not the first /24's region.
    wide = dig(port, "_sip._tcp.voip.example.com", "SRV", "+subnet=127.0.1.0/16")
    assert min(wide.rdata("SRV")).split()[3] == "site-a.example.com."
    # Addresses are one set for everyone (scope 0): asked for one /24, cached for all.
    first = dig(port, "geo.example.com", "A", "+subnet=127.0.1.0/24")
    assert sorted(first.rdata("A")) == ["192.0.2.10", "198.51.100.10"]
    before = answered(sipzone)
    for subnet in ("127.0.0.0/24", "10.1.2.0/24", "192.0.2.0/24"):
        again = dig(port, "geo.example.com", "A", f"+subnet={subnet}")
        assert sorted(again.rdata("A")) == sorted(first.rdata("A"))
    assert answered(sipzone) == before  # from Unbound's cache, not asked again
    # SRV depends on the subnet: another /24 is asked again.
    dig(port, srv, "SRV", "+subnet=10.1.2.0/24")
    assert answered(sipzone) > before


def test_through_bind_forwarding(live_dns: type[LiveDns], tmp_path: Path) -> None:
    """BIND 9.18 as the resolver (its static-stub zones take no port: a forward zone)."""
    sipzone = live_dns(NEIGHBOURS)
    port = free_port()
    conf = tmp_path / "named.conf"
    conf.write_text(
        f"""options {{
    directory "{tmp_path}";
    pid-file none;
    session-keyfile "{tmp_path}/session.key";
    managed-keys-directory "{tmp_path}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; }};
    dnssec-validation no;
}};
controls {{ }};
zone "example.com" {{
    type forward;
    forward only;
    forwarders {{ 127.0.0.1 port {sipzone.port}; }};
}};
"""
    )
    log = tmp_path / "named.log"
    named = subprocess.Popen(
        [need("named"), "-g", "-n", "1", "-c", str(conf)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):  # bounded: 10 s
            assert named.poll() is None, log.read_text()
            if dig(port, "example.com", "SOA").status == "NOERROR":
                break
            time.sleep(0.1)
        a = dig(port, "Cust42.Teams.example.com", "A")
        assert sorted(a.rdata("A")) == ["192.0.2.10", "198.51.100.10"]
        srv = dig(port, "_sip._udp.voip.example.com", "SRV")
        assert sorted(r.split()[3] for r in srv.rdata("SRV")) == [
            "site-a.example.com.",
            "site-b.example.com.",
        ]
        assert len(dig(port, "voip.example.com", "NAPTR").rdata("NAPTR")) == 3
        assert dig(port, "nope.example.com", "A").status == "NXDOMAIN"
        assert dig(port, "_sips._tcp.cust42.teams.example.com", "SRV").rdata("SRV")
    finally:
        named.terminate()
        named.wait(10)
