"""Real phones over TLS (issue 9): baresip phones that know only their account with
``;transport=tls`` find the edge through sipzone's DNS (NAPTR ``SIPS+D2T`` → ``_sips._tcp`` SRV
→ A: the site offers TLS only), register through it over TLS at the Kamailio core of
test_phones.py, and call each other both ways: the core's INVITE reaches the callee over its own
TLS connection (the flow in our Path).

The harness is test_phones.py's (``Platform``, ``Core``, ``Phone``, ``call``); ``Platform.check``
asserts that every message went between the phone and the edge's TLS port, over TLS, without
the tenant header.  baresip 1.0 (Debian) does not check the server's certificate against its
``sip_cafile`` (it registers with a CA file of another CA, too), so this proves the transport,
the DNS and the flows, not certificate checks: tests/sip/test_tls.py does those with Python's
``ssl``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme

from tests.conftest import Server
from tests.sip.conftest import free_port
from tests.sip.test_phones import Core, Platform, _sipzone, call, pytestmark, register_both
from tests.tlscerts import issue

__all__ = ["pytestmark"]  # test_phones.py's: integration; baresip and kamailio needed


@pytest.fixture(scope="module")
def tls_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    workdir = tmp_path_factory.mktemp("tls-phones")
    cert = issue(trustme.CA(), workdir / "pki", "*.teams.example.com", "voip.example.com")
    core = Core(workdir / "core")
    try:
        db = f"sqlite:///{workdir / 'sipzone.db'}"
        upstream = f"sip:127.0.0.1:{core.port}"
        dns_port, tls_port, udp_port = free_port(), free_port(), free_port()
        for args in (
            ("init",),
            ("nameserver", "add", "ns1.example.org"),
            ("zone", "add", "example.com"),
            ("tenant", "add", "acme", "--upstream", upstream),
            ("domain", "add", "voip.example.com"),
            ("domain", "add", "*.teams.example.com", "--owner", "acme"),
            ("cert", "add", "edge", "--cert", str(cert.chain), "--key", str(cert.key)),
            # The DNS offers TLS only: phones find the TLS port by NAPTR and SRV.
            ("site", "add", "fra", "--vip", "127.0.0.1", "--region", "eu",
             "--host", "sip.example.com", "--port-udp", "0", "--port-tcp", "0",
             "--port-tls", str(tls_port), "--upstream", upstream),
        ):  # fmt: skip
            _sipzone(db, *args)
        listen = f"tls:127.0.0.1:{tls_port},udp:127.0.0.1:{udp_port}"  # UDP toward the core
        server = Server(["--dns", f"127.0.0.1:{dns_port}", "--sip", listen], db)
    except BaseException:
        core.stop()
        raise
    platform = Platform(workdir, dns_port, tls_port, core, server)
    yield platform
    platform.close()


@pytest.fixture
def over_tls(tls_platform: Platform) -> Iterator[Platform]:
    yield tls_platform
    tls_platform.stop_phones()


def test_phones_register_over_tls_found_by_naptr(over_tls: Platform) -> None:
    register_both(over_tls, "tls")


@pytest.mark.parametrize(
    ("caller", "hangs_up"),
    [("alice", "callee"), ("bob", "caller")],
    ids=["alice-calls-bob-bob-hangs-up", "bob-calls-alice-bob-hangs-up"],
)
def test_call_over_tls_both_ways(over_tls: Platform, caller: str, hangs_up: str) -> None:
    call(over_tls, "tls", caller, hangs_up)
