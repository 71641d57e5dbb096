"""Upstreams located by RFC 3263 (sip/locate.py) against sipzone's own DNS, which publishes
NAPTR, SRV and A records for a SIP domain: a core platform's sites as SRV targets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sipzone.sip import locate
from sipzone.sip.choice import Hop
from sipzone.sip.locate import LocateFailed, Location, Locator
from sipzone.sip.values import Target
from tests.conftest import Cli, Server, free_port


@pytest.fixture
def core_dns(cli: Cli, serve: Callable[..., Server]) -> int:
    """sipzone's DNS for the core's domain pbx.core.test: site a (127.0.0.2; UDP 5071, TCP
    5072) in the resolver's region, so SRV priority 10, weight 30; site b (127.0.0.3; UDP 5081
    only) priority 20, weight 10.  Answers live 120 s."""
    for args in (
        ("init",),
        ("zone", "add", "core.test"),
        ("tenant", "add", "core"),
        ("site", "add", "a", "--vip", "127.0.0.2", "--region", "near", "--network",
         "127.0.0.0/8", "--host", "a.core.test", "--port-udp", "5071", "--port-tcp", "5072",
         "--weight", "30"),
        ("site", "add", "b", "--vip", "127.0.0.3", "--region", "far", "--host", "b.core.test",
         "--port-udp", "5081", "--port-tcp", "0", "--weight", "10"),
        ("domain", "add", "pbx.core.test", "--owner", "core"),
    ):  # fmt: skip
        cli(*args, check=True)
    port = free_port()
    serve("--dns", f"127.0.0.1:{port}", "--ttl", "120")
    return port


def locate_with(port: int, uri: str, pins: tuple[tuple[str, str], ...] = ()) -> Location:
    return asyncio.run(Locator([("127.0.0.1", port)], pins, ("A",)).locate(uri))


def test_naptr_picks_the_transport_srv_the_targets(core_dns: int) -> None:
    # NAPTR: SIP+D2T (order 20) before SIP+D2U (30); only site a offers TCP.
    location = locate_with(core_dns, "sip:pbx.core.test")
    assert location.hops == (Hop(Target("tcp", "127.0.0.2", 5072), 10, 30, "a.core.test"),)
    assert location.ttl == 120
    # A transport parameter skips NAPTR and selects the SRV service.
    location = locate_with(core_dns, "sip:pbx.core.test;transport=udp")
    assert sorted(location.hops) == [
        Hop(Target("udp", "127.0.0.2", 5071), 10, 30, "a.core.test"),
        Hop(Target("udp", "127.0.0.3", 5081), 20, 10, "b.core.test"),
    ]


def test_a_port_an_address_or_a_pin_skip_naptr_and_srv_no_srv_means_the_host(core_dns: int) -> None:
    location = locate_with(core_dns, "sip:pbx.core.test:5090")
    assert {hop.target for hop in location.hops} == {
        Target("udp", "127.0.0.2", 5090),
        Target("udp", "127.0.0.3", 5090),
    }
    assert locate_with(core_dns, "sip:192.0.2.7;transport=tcp").hops == (
        Hop(Target("tcp", "192.0.2.7", 5060), 0, 0, "192.0.2.7"),
    )
    # A pinned name (serve --sip-host) is its address, whatever the DNS says.
    pinned = locate_with(core_dns, "sip:pbx.core.test", (("pbx.core.test", "192.0.2.9"),))
    assert [hop.target for hop in pinned.hops] == [Target("udp", "192.0.2.9", 5060)]
    # No site offers TLS: _sips._tcp has no SRV, so the host itself on 5061.
    location = locate_with(core_dns, "sips:pbx.core.test")
    assert {hop.target for hop in location.hops} == {
        Target("tls", "127.0.0.2", 5061),
        Target("tls", "127.0.0.3", 5061),
    }
    # A name the DNS does not have is an answer with nothing in it, not a failure.
    assert locate_with(core_dns, "sip:nowhere.core.test").hops == ()


def test_no_answer_at_all_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate, "LOCATE_TIMEOUT", 0.5)
    silent = free_port()  # nobody answers there
    with pytest.raises(LocateFailed):
        locate_with(silent, "sip:pbx.core.test")
    with pytest.raises(ValueError, match="not a sip"):
        locate_with(silent, "tel:+4930123")
