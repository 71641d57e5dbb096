"""The authority on loopback, asked with real `dig`: every record kind and server behaviour."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from sipzone.dns import DnsConfig, server
from tests.dns.conftest import SITE_A, SITE_B, LiveDns, dig, ip, snapshot, with_rules

VIPS_V4 = ["192.0.2.10", "198.51.100.10"]


def srv(answer: list[str]) -> list[tuple[int, int, int, str]]:
    out = []
    for text in answer:
        prio, weight, port, target = text.split()
        out.append((int(prio), int(weight), int(port), target))
    return sorted(out)


def test_sip_domain_addresses_all_sites_and_echoes_question_case(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    r = dig(port, "VoIP.Example.COM", "A")
    assert r.status == "NOERROR"
    assert "aa" in r.flags
    assert r.question[0] == "VoIP.Example.COM."
    assert sorted(r.rdata("A")) == VIPS_V4
    assert r.answer[0][0] == "VoIP.Example.COM."  # owner compressed onto the question
    r6 = dig(port, "voip.example.com", "AAAA")
    assert r6.rdata("AAAA") == ["2001:db8::10"]


def test_srv_per_transport_ordered_by_client_region(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    # Loopback is site-a's network: site-a first.
    local = dig(port, "_sip._udp.voip.example.com", "SRV")
    assert srv(local.rdata("SRV")) == [
        (10, 100, 5060, "site-a.example.com."),
        (20, 50, 5070, "site-b.example.com."),
    ]
    # Glue for the targets in the additional section.
    assert {r[0] for r in local.additional} == {"site-a.example.com.", "site-b.example.com."}
    # ECS from site-b's network: site-b first, scope echoed.
    far = dig(port, "_sip._tcp.voip.example.com", "SRV", "+subnet=198.51.100.0/24")
    assert srv(far.rdata("SRV")) == [
        (10, 50, 5070, "site-b.example.com."),
        (20, 100, 5060, "site-a.example.com."),
    ]
    assert "CLIENT-SUBNET: 198.51.100.0/24/24" in far.text
    # ECS matching no site: the configured order (site-a order 1, site-b order 2).
    default = dig(port, "_sip._tcp.voip.example.com", "SRV", "+subnet=203.0.113.0/24")
    assert srv(default.rdata("SRV"))[0][3] == "site-a.example.com."
    swapped = replace(SITE_A, order=3)
    live = live_dns(snapshot(sites=(swapped, SITE_B)))
    again = dig(live.port, "_sip._tcp.voip.example.com", "SRV", "+subnet=203.0.113.0/24")
    assert srv(again.rdata("SRV"))[0][3] == "site-b.example.com."


def test_naptr_points_at_the_srv_names_and_can_be_switched_off(live_dns: type[LiveDns]) -> None:
    r = dig(live_dns().port, "voip.example.com", "NAPTR")
    assert r.rdata("NAPTR") == [
        '10 10 "s" "SIPS+D2T" "" _sips._tcp.voip.example.com.',
        '20 10 "s" "SIP+D2T" "" _sip._tcp.voip.example.com.',
        '30 10 "s" "SIP+D2U" "" _sip._udp.voip.example.com.',
    ]
    off = live_dns(config=DnsConfig(naptr=False))
    r = dig(off.port, "voip.example.com", "NAPTR")
    assert (r.status, r.answer) == ("NOERROR", [])


def test_wildcard_names_answer_like_exact_domains(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    assert sorted(dig(port, "cust7.teams.example.com", "A").rdata("A")) == VIPS_V4
    assert sorted(dig(port, "deep.er.teams.example.com", "A").rdata("A")) == VIPS_V4
    sips = dig(port, "_sips._tcp.Cust42.teams.example.com", "SRV")
    assert sips.answer[0][0] == "_sips._tcp.Cust42.teams.example.com."
    assert [s[2] for s in srv(sips.rdata("SRV"))] == [5071]  # site-a offers no TLS
    naptr = dig(port, "cust42.teams.example.com", "NAPTR").rdata("NAPTR")
    assert naptr[0].endswith("_sips._tcp.cust42.teams.example.com.")
    # The SRV name of a wildcard-covered name has SRV only; its parent is an empty
    # non-terminal; the wildcard's base is one too.
    for name, rdtype in [
        ("_sip._udp.cust42.teams.example.com", "A"),
        ("_udp.cust42.teams.example.com", "A"),
        ("teams.example.com", "A"),
    ]:
        r = dig(port, name, rdtype)
        assert (r.status, r.answer) == ("NOERROR", []), name
        assert r.authority[0][3] == "SOA"


def test_nxdomain_and_nodata_with_soa_in_authority(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    nx = dig(port, "nope.example.com", "A")
    assert nx.status == "NXDOMAIN"
    assert "aa" in nx.flags
    assert nx.authority[0][0] == "example.com." and nx.authority[0][3] == "SOA"
    # b.example.com is an empty non-terminal above a.b.example.com: NODATA, not NXDOMAIN.
    ent = dig(port, "b.example.com", "A")
    assert (ent.status, ent.answer, ent.authority[0][3]) == ("NOERROR", [], "SOA")
    below = dig(port, "x.a.b.example.com", "A")
    assert below.status == "NXDOMAIN"
    # An existing name without the type asked for.
    mx = dig(port, "voip.example.com", "MX")
    assert (mx.status, mx.answer, mx.authority[0][3]) == ("NOERROR", [], "SOA")
    # _sip._udp of a name that is not a SIP domain does not exist.
    assert dig(port, "_sip._udp.nope.example.com", "SRV").status == "NXDOMAIN"


def test_refused_outside_our_zones(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    r = dig(port, "voip.example.org", "A")
    assert r.status == "REFUSED"
    assert "aa" not in r.flags
    assert dig(port, "com", "SOA").status == "REFUSED"
    assert dig(port, "version.bind", "TXT", "CH").status == "REFUSED"


def test_apex_soa_ns_and_site_hosts(live_dns: type[LiveDns]) -> None:
    port = live_dns(snapshot(revision=42)).port
    soa = dig(port, "example.com", "SOA").rdata("SOA")
    assert soa[0].split()[2] == "42"
    ns = dig(port, "example.com", "NS").rdata("NS")
    assert sorted(ns) == ["site-a.example.com.", "site-b.example.com."]
    assert dig(port, "site-a.example.com", "AAAA").rdata("AAAA") == ["2001:db8::10"]
    assert dig(port, "site-b.example.com", "A").rdata("A") == ["198.51.100.10"]


def test_email_domain_has_addresses_and_mx_the_same_everywhere(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    here = dig(port, "mail.example.com", "A")
    there = dig(port, "mail.example.com", "A", "+subnet=198.51.100.0/24")
    assert sorted(here.rdata("A")) == VIPS_V4
    assert here.rdata("A") == there.rdata("A")
    assert "CLIENT-SUBNET: 198.51.100.0/24/0" in there.text
    assert dig(port, "mail.example.com", "MX").rdata("MX") == ["10 mail.example.com."]
    other = live_dns(snapshot(settings={"email_mx": "mx.provider.example"}))
    assert dig(other.port, "mail.example.com", "MX").rdata("MX") == ["10 mx.provider.example."]


def test_unhealthy_site_drops_out(live_dns: type[LiveDns]) -> None:
    down = replace(SITE_B, healthy=False)
    port = live_dns(snapshot(sites=(SITE_A, down))).port
    assert dig(port, "voip.example.com", "A").rdata("A") == ["192.0.2.10"]
    targets = [s[3] for s in srv(dig(port, "_sip._udp.voip.example.com", "SRV").rdata("SRV"))]
    assert targets == ["site-a.example.com."]
    # The site's own host name still resolves.
    assert dig(port, "site-b.example.com", "A").rdata("A") == ["198.51.100.10"]


def test_any_gets_a_minimal_answer(live_dns: type[LiveDns]) -> None:
    r = dig(live_dns().port, "voip.example.com", "ANY")
    assert r.status == "NOERROR"
    assert len({row[3] for row in r.answer}) == 1


def test_edns_payload_and_badvers(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    r = dig(port, "voip.example.com", "A", "+bufsize=4096")
    assert "udp: 1232" in r.text
    bad = dig(port, "voip.example.com", "A", "+edns=1", "+noednsnegotiation")
    assert bad.status == "BADVERS"


def test_large_answer_truncates_over_udp_and_completes_over_tcp(live_dns: type[LiveDns]) -> None:
    many = replace(SITE_A, vips=tuple(ip(f"2001:db8::{i:x}") for i in range(1, 41)))
    port = live_dns(snapshot(sites=(many, SITE_B))).port
    udp = dig(port, "voip.example.com", "AAAA", "+noedns", "+ignore")
    assert "tc" in udp.flags
    assert udp.answer == []
    full = dig(port, "voip.example.com", "AAAA", "+noedns")  # dig retries over TCP
    assert len(full.rdata("AAAA")) == 40
    tcp = dig(port, "voip.example.com", "AAAA", "+tcp", "+ignore")
    assert "tc" not in tcp.flags
    assert len(tcp.rdata("AAAA")) == 40


def test_garbage_gets_formerr_and_never_stops_the_server(live_dns: type[LiveDns]) -> None:
    port = live_dns().port
    here = ("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        # A header claiming one question, then a compression pointer where the name starts.
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", here)
        reply = s.recv(512)
        assert reply[:2] == b"\x12\x34"
        assert reply[3] & 0x0F == 1  # FORMERR
        # Two questions.
        s.sendto(b"\xab\xcd\x00\x00\x00\x02" + b"\x00" * 6 + b"\x00\x00\x01\x00\x01" * 2, here)
        assert s.recv(512)[3] & 0x0F == 1
        for junk in (b"", b"\x00", b"\xff" * 11, b"\x00" * 12, bytes(range(256)) * 3):
            s.sendto(junk, here)
    assert sorted(dig(port, "voip.example.com", "A").rdata("A")) == VIPS_V4


def test_changes_show_without_restart_and_raise_the_serial(live_dns: type[LiveDns]) -> None:
    first = snapshot(revision=7)
    live = live_dns(first)
    assert dig(live.port, "new.example.com", "A").status == "NXDOMAIN"
    second = with_rules(first, added=["new.example.com"])
    live.publish(second)
    assert sorted(dig(live.port, "new.example.com", "A").rdata("A")) == VIPS_V4
    soa = dig(live.port, "nope.example.com", "A").authority[0]
    assert soa[6] == "8"
    third = with_rules(second, removed=["*.teams.example.com"])
    live.publish(third)
    assert dig(live.port, "cust7.teams.example.com", "A").status == "NXDOMAIN"
    assert dig(live.port, "example.com", "SOA").rdata("SOA")[0].split()[2] == "9"


def test_burst_with_unanswerable_datagrams_keeps_answers_matched(live_dns: type[LiveDns]) -> None:
    """Answers go back to the right sender and ID even when some datagrams in a batch get
    none (responses are never answered)."""
    import dns.message

    port = live_dns().port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        expected = set()
        for i in range(60):
            query = dns.message.make_query("voip.example.com", "A", id=1000 + i)
            if i % 3 == 1:
                s.sendto(dns.message.make_response(query).to_wire(), ("127.0.0.1", port))
            else:
                s.sendto(query.to_wire(), ("127.0.0.1", port))
                expected.add(1000 + i)
        got = set()
        while got != expected:
            reply = dns.message.from_wire(s.recv(4096))
            assert sorted(r.to_text() for r in reply.answer[0]) == VIPS_V4
            got.add(reply.id)
        assert got == expected


def test_ipv6_listener_and_plain_asyncio_udp() -> None:
    for batched in (True, False):
        server = LiveDns(snapshot(), DnsConfig(listen="[::1]:0", batched_udp=batched))
        try:
            r = dig(server.port, "voip.example.com", "A", server="::1")
            assert sorted(r.rdata("A")) == VIPS_V4
            far = dig(
                server.port, "_sip._udp.voip.example.com", "SRV", "+subnet=198.51.100.0/24",
                server="::1",
            )  # fmt: skip
            assert srv(far.rdata("SRV"))[0][3] == "site-b.example.com."
        finally:
            server.close()


def test_full_rebuilds_run_on_a_thread_and_later_deltas_follow_in_order(
    live_dns: type[LiveDns], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "REBUILD_ON_THREAD", 0)  # as if the store were huge
    live = live_dns(snapshot(revision=1))
    full = snapshot(revision=2, sites=(SITE_A, replace(SITE_B, healthy=False)))  # no delta
    added = with_rules(full, added=["t1.example.com"])
    removed = with_rules(added, removed=["voip.example.com"])
    live.publish(full, added, removed)
    assert dig(live.port, "t1.example.com", "A").rdata("A") == ["192.0.2.10"]
    assert dig(live.port, "voip.example.com", "A").status == "NXDOMAIN"
    assert dig(live.port, "example.com", "SOA").rdata("SOA")[0].split()[2] == "4"
