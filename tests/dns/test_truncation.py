"""A response too big for the client's payload drops whole additional record sets first and is
truncated (TC) only when its answer does not fit (RFC 2181 §9; issue 7, item 12)."""

from __future__ import annotations

from collections import Counter

from sipzone.model.snapshot import Site
from tests.dns.conftest import Dig, LiveDns, dig, ip, snapshot

NO_EDNS = ("+noedns", "+ignore")  # 512 octets; +ignore: show TC instead of retrying over TCP
EDNS_1232 = ("+bufsize=1232", "+ignore")


def eight_sites(host: str | None = None) -> tuple[Site, ...]:
    """8 sites, each with two IPv4 and two IPv6 VIPs (so an RRset in the glue has 2 records)."""
    return tuple(
        Site(
            f"site-{i}",
            f"r{i}",
            (
                ip(f"192.0.2.{i}"),
                ip(f"192.0.2.{100 + i}"),
                ip(f"2001:db8::{i}"),
                ip(f"2001:db8::1:{i}"),
            ),
            host=host.format(i) if host else None,
            order=i,
        )
        for i in range(1, 9)
    )


def assert_whole_rrsets(r: Dig) -> Counter[tuple[str, str]]:
    """Every (owner, type) in the additional section has all its records."""
    sets = Counter((row[0], row[3]) for row in r.additional if row[3] in ("A", "AAAA"))
    assert all(count == 2 for count in sets.values()), sets
    return sets


def test_eight_sites_ns_and_srv_keep_their_answer_and_drop_glue(live_dns: type[LiveDns]) -> None:
    port = live_dns(snapshot(sites=eight_sites())).port
    for owner, rdtype in [("example.com", "NS"), ("_sip._udp.voip.example.com", "SRV")]:
        small = dig(port, owner, rdtype, *NO_EDNS)
        assert small.status == "NOERROR"
        assert "tc" not in small.flags, small.text
        assert len(small.rdata(rdtype)) == 8
        kept = assert_whole_rrsets(small)
        assert 0 < len(kept) < 16  # some glue fits in 512 octets, not all of it
        # 1232 octets hold all of the glue (its owners are compressed), as TCP does.
        edns = dig(port, owner, rdtype, *EDNS_1232)
        assert "tc" not in edns.flags
        assert len(edns.rdata(rdtype)) == 8
        assert len(kept) < len(assert_whole_rrsets(edns)) == 16
        full = dig(port, owner, rdtype, "+tcp")
        assert len(full.rdata(rdtype)) == 8
        assert len(assert_whole_rrsets(full)) == 16


def test_long_host_names_overflow_1232_in_the_glue_only(live_dns: type[LiveDns]) -> None:
    host = "sip-edge-{}.a-rather-long-region-label.example.com"
    port = live_dns(snapshot(sites=eight_sites(host))).port
    edns = dig(port, "_sip._tcp.voip.example.com", "SRV", *EDNS_1232)
    assert (edns.status, "tc" in edns.flags) == ("NOERROR", False)
    assert len(edns.rdata("SRV")) == 8
    assert 0 < len(assert_whole_rrsets(edns)) < 16
    assert "MSG SIZE  rcvd: " in edns.text
    assert int(edns.text.split("MSG SIZE  rcvd: ")[1].split()[0]) <= 1232
    # Without EDNS, the 8 SRV records alone exceed 512 octets: truncated, empty, retry by TCP.
    small = dig(port, "_sip._tcp.voip.example.com", "SRV", *NO_EDNS)
    assert "tc" in small.flags
    assert (small.answer, small.additional) == ([], [])
    retried = dig(port, "_sip._tcp.voip.example.com", "SRV", "+noedns")
    assert len(retried.rdata("SRV")) == 8
    assert len(assert_whole_rrsets(retried)) == 16
