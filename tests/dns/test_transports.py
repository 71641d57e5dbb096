"""A site publishes only the SIP transports it has ports for (issue 7, item 13): a phone that
follows RFC 3263 must never be sent to TLS that nobody serves."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from sipzone.dns import DnsConfig
from sipzone.dns.export import export_zone
from sipzone.model.mail import SRV_NAMES
from sipzone.model.snapshot import DEFAULT_PORTS, Site
from tests.conftest import Cli, Server, free_port
from tests.dns.conftest import SITE_A, SITE_B, LiveDns, dig, ip, snapshot


def naptr_services(port: int, name: str = "voip.example.com") -> list[str]:
    return [r.split()[3].strip('"') for r in dig(port, name, "NAPTR").rdata("NAPTR")]


def srv_ports(port: int, owner: str) -> list[tuple[str, int]]:
    return sorted((r.split()[3], int(r.split()[2])) for r in dig(port, owner, "SRV").rdata("SRV"))


def test_by_default_a_site_offers_udp_and_tcp_and_no_tls(live_dns: type[LiveDns]) -> None:
    assert dict(DEFAULT_PORTS) == {"udp": 5060, "tcp": 5060, "tls": 0}
    plain = replace(SITE_B, ports=DEFAULT_PORTS)
    for config in (DnsConfig(), DnsConfig(naptr=False)):
        port = live_dns(snapshot(sites=(SITE_A, plain)), config).port
        if config.naptr:
            assert naptr_services(port) == ["SIP+D2T", "SIP+D2U"]
        # No site offers TLS: `_sips._tcp.D` does not exist, as in the zone a secondary gets;
        # below a wildcard `*.B` it is one more name the wildcard covers (no SRV: NODATA).
        for name, status in [
            ("voip.example.com", "NXDOMAIN"),
            ("cust1.teams.example.com", "NOERROR"),
        ]:
            sips = dig(port, f"_sips._tcp.{name}", "SRV")
            assert (sips.status, sips.answer, sips.authority[0][3]) == (status, [], "SOA")
            for service in ("_sip._tcp", "_sip._udp"):
                assert srv_ports(port, f"{service}.{name}") == [
                    ("site-a.example.com.", 5060), ("site-b.example.com.", 5060),
                ]  # fmt: skip
            # `_tcp.D` still has `_sip._tcp.D` below it: an empty non-terminal.
            assert dig(port, f"_tcp.{name}", "A").status == "NOERROR"


def test_each_transport_lists_exactly_the_sites_that_offer_it(live_dns: type[LiveDns]) -> None:
    udp_only = replace(SITE_A, ports={"udp": 5060, "tcp": 0, "tls": 0})
    tls_only = replace(SITE_B, ports={"udp": 0, "tcp": 0, "tls": 5061})
    port = live_dns(snapshot(sites=(udp_only, tls_only))).port
    assert naptr_services(port) == ["SIPS+D2T", "SIP+D2U"]
    assert srv_ports(port, "_sips._tcp.voip.example.com") == [("site-b.example.com.", 5061)]
    assert srv_ports(port, "_sip._udp.voip.example.com") == [("site-a.example.com.", 5060)]
    assert dig(port, "_sip._tcp.voip.example.com", "SRV").status == "NXDOMAIN"
    # The zone a secondary transfers (and `zone export`) says the same.
    zone = export_zone(snapshot(sites=(udp_only, tls_only)), "example.com")
    owners = {line.split()[0] for line in zone.splitlines() if line and line[0] == "_"}
    mail = {f"{label}._tcp.mail" for label, _ in SRV_NAMES}  # the email domain's, always
    assert owners == mail | {
        f"{service}.{name}"
        for service in ("_sips._tcp", "_sip._udp")
        for name in ("voip", "geo", "a.b", "teams")
    }
    only_udp = live_dns(snapshot(sites=(udp_only,))).port
    assert naptr_services(only_udp) == ["SIP+D2U"]
    assert dig(only_udp, "_tcp.voip.example.com", "A").status == "NXDOMAIN"
    assert dig(only_udp, "_udp.voip.example.com", "A").status == "NOERROR"


def test_a_transport_only_unhealthy_sites_offer_is_left_out_of_naptr(
    live_dns: type[LiveDns],
) -> None:
    tls_down = replace(SITE_B, ports={"udp": 5070, "tcp": 5070, "tls": 5071}, healthy=False)
    port = live_dns(snapshot(sites=(SITE_A, tls_down))).port
    assert naptr_services(port) == ["SIP+D2T", "SIP+D2U"]
    # The name exists (a site is configured for TLS) but no serving site offers it: NODATA,
    # so a resolver does not cache the name away while the site is down.
    sips = dig(port, "_sips._tcp.voip.example.com", "SRV")
    assert (sips.status, sips.answer, sips.authority[0][3]) == ("NOERROR", [], "SOA")


def test_cli_ports_zero_means_not_offered_and_dns_follows(
    cli: Cli, serve: Callable[..., Server]
) -> None:
    cli("init", check=True)
    cli("nameserver", "add", "ns1.example.org", check=True)
    cli("zone", "add", "example.com", check=True)
    cli("site", "add", "eu1", "--vip", "192.0.2.10", "--region", "eu", check=True)
    cli(
        "site", "add", "us1", "--vip", "198.51.100.10", "--region", "us",
        "--port-udp", "0", "--port-tls", "5061", check=True,
    )  # fmt: skip
    nothing = cli(
        "site", "add", "x1", "--vip", "203.0.113.1", "--region", "x",
        "--port-udp", "0", "--port-tcp", "0",
    )  # fmt: skip
    assert nothing.returncode == 2
    assert "at least one transport" in nothing.stderr
    refused = cli(
        "site", "add", "x2", "--vip", "203.0.113.2", "--region", "x", "--port-tls", "70000"
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    listed = json.loads(cli("site", "list", "--json", check=True).stdout)
    assert {s["name"]: s["ports"] for s in listed} == {
        "eu1": {"udp": 5060, "tcp": 5060, "tls": 0},
        "us1": {"udp": 0, "tcp": 5060, "tls": 5061},
    }
    cli("domain", "add", "voip.example.com", "--owner", "provider", check=True)
    port = free_port()
    serve("--dns", f"127.0.0.1:{port}")
    assert naptr_services(port) == ["SIPS+D2T", "SIP+D2T", "SIP+D2U"]
    assert srv_ports(port, "_sips._tcp.voip.example.com") == [("us1.example.com.", 5061)]
    assert srv_ports(port, "_sip._udp.voip.example.com") == [("eu1.example.com.", 5060)]
    assert len(srv_ports(port, "_sip._tcp.voip.example.com")) == 2


def test_site_defaults_match_the_model() -> None:
    site = Site("s", "r", (ip("192.0.2.1"),))
    assert dict(site.ports) == {"udp": 5060, "tcp": 5060, "tls": 0}
