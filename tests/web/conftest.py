"""Voicemail fixtures: a private Dovecot holding spoken voice messages, and `sipzone serve` with
its DNS and web service on a store whose email domain points at that Dovecot.

The installation: zone example.com, site ``eu`` (virtual IP 127.0.0.1, host eu.example.com)
whose voicemail store is the Dovecot (``--imap PORT``: the site's own host), email domain
mail.example.com; tenant ``acme`` (brand "Acme Voice") owns the SIP domain voip.acme.example.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from sipzone.store.repository import Store
from tests.browser import browser  # noqa: F401 (a fixture of the voicemail page's tests)
from tests.conftest import Server, free_port
from tests.tlscerts import issue
from tests.web.dovecot import Dovecot, Voice, speak, voice_email

EMAIL = "mail.example.com"
SITE_HOST = "eu.example.com"
MAILBOX = "1001@mail.example.com"
PASSWORD = "correct horse"
ACME_MAILBOX = "2001@voip.acme.example"
ACME_PASSWORD = "battery staple"
SUBMISSION = "smtp.example.com:465"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Voice:
    return speak("Hello, this is Alice. Please call me back about the meeting.",
                 tmp_path_factory.mktemp("voice"))  # fmt: skip


@pytest.fixture
def dovecot(ca: trustme.CA, voice: Voice) -> Iterator[Dovecot]:
    """Dovecot with a mailbox under the email domain and one under acme's SIP domain, each
    holding one voice message from Alice."""
    server = Dovecot(ca, SITE_HOST, {MAILBOX: PASSWORD, ACME_MAILBOX: ACME_PASSWORD})
    try:
        for user in (MAILBOX, ACME_MAILBOX):
            server.deliver(user, voice_email(user, voice, "2002", "Alice"))
        yield server
    finally:
        server.stop()


@dataclass
class Voicemail:
    """The running installation: its web service's URL, its DNS address, the pieces."""

    web: str  # https://127.0.0.1:PORT
    dns: tuple[str, int]
    store: Store
    dovecot: Dovecot
    voice: Voice
    server: Server
    trust: ssl.SSLContext  # trusts the test's CA

    def client(self, host: str = EMAIL, **options: Any) -> httpx.Client:
        """An HTTPS client of the web service asking for ``host`` (the certificate also names
        127.0.0.1, where the client connects)."""
        return httpx.Client(
            base_url=self.web, headers={"Host": host}, verify=self.trust, timeout=30, **options
        )


@pytest.fixture
def voicemail(
    sqlite_url: str,
    serve: Callable[..., Server],
    dovecot: Dovecot,
    voice: Voice,
    ca: trustme.CA,
    tmp_path: Path,
) -> Iterator[Voicemail]:
    store = Store(sqlite_url)
    store.init()
    store.add_zone("example.com")
    store.add_site("eu", vips=["127.0.0.1"], region="eu", host=SITE_HOST, networks=["127.0.0.0/8"])
    store.set_email_domain(EMAIL, imap=[str(dovecot.port)], submission=[SUBMISSION])
    store.add_tenant("acme", "provider", brand_name="Acme Voice")
    store.add_domain("voip.acme.example", "acme")
    names = (EMAIL, f"autoconfig.{EMAIL}", f"autodiscover.{EMAIL}", "127.0.0.1")
    cert = issue(ca, tmp_path / "tls", *names)
    store.add_certificate("mail", cert.chain.read_text(), cert.key.read_text())
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    web, dns = free_port(), free_port()
    server = serve(
        "--api", f"127.0.0.1:{web}", "--api-tls", "--dns", f"127.0.0.1:{dns}",
        "--site", "eu", "--mail-ca", str(ca_file),
    )  # fmt: skip
    trust = ssl.create_default_context(cafile=str(ca_file))
    yield Voicemail(
        f"https://127.0.0.1:{web}", ("127.0.0.1", dns), store, dovecot, voice, server, trust
    )
    store.close()
