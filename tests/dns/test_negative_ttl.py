"""Negative answers are cached for the negative TTL, not the record TTL (issue 7, item 14):
SOA MINIMUM = `--negative-ttl` (default 60 s), and the SOA in a negative answer carries
min(SOA TTL, MINIMUM) (RFC 2308 §3, §5)."""

from __future__ import annotations

from collections.abc import Callable

from sipzone.dns import DnsConfig
from tests.conftest import Cli, Server, free_port
from tests.dns.conftest import LiveDns, dig

NEGATIVE = [("nope.example.com", "A", "NXDOMAIN"), ("voip.example.com", "MX", "NOERROR"),
            ("b.example.com", "A", "NOERROR")]  # fmt: skip


def check_ttls(port: int, ttl: int, negative: int) -> None:
    for name, rdtype, status in NEGATIVE:
        r = dig(port, name, rdtype)
        assert (r.status, r.answer) == (status, []), name
        soa = r.authority[0]
        assert soa[3] == "SOA"
        assert int(soa[1]) == min(ttl, negative), name  # the SOA's TTL in a negative answer
        assert int(soa[-1]) == negative  # its MINIMUM field
    apex = dig(port, "example.com", "SOA").answer[0]
    assert (int(apex[1]), int(apex[-1])) == (ttl, negative)
    for row in dig(port, "voip.example.com", "A").answer:
        assert int(row[1]) == ttl


def test_negative_ttl_defaults_to_60_and_is_set_apart(live_dns: type[LiveDns]) -> None:
    check_ttls(live_dns().port, 300, 60)
    check_ttls(live_dns(config=DnsConfig(negative_ttl=15)).port, 300, 15)
    check_ttls(live_dns(config=DnsConfig(ttl=30, negative_ttl=600)).port, 30, 600)


def test_serve_negative_ttl_option(cli: Cli, serve: Callable[..., Server]) -> None:
    cli("init", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.10", "--region", "eu", check=True)
    cli("domain", "add", "voip.example.com", "--owner", "provider", check=True)
    cli("domain", "add", "a.b.example.com", "--owner", "provider", check=True)
    port = free_port()
    serve("--dns", f"127.0.0.1:{port}", "--negative-ttl", "45", "--ttl", "120")
    check_ttls(port, 120, 45)
    assert cli("serve", "--dns", "127.0.0.1:0", "--negative-ttl", "-1").returncode == 2
