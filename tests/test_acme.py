"""ACME against a real CA: Pebble, validating DNS-01 through sipzone's own DNS.

Each test starts Pebble (Debian ``pebble``) on free ports with ``-dnsserver`` at the DNS of a
``sipzone serve`` it also starts; Pebble's HTTPS certificate comes from a trustme CA made here,
and what Pebble issues is verified against the root its management port serves.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from sipzone.store.repository import NodeBeat, Store
from sipzone.store.schema import nodes
from tests.conftest import free_port, missing
from tests.dns import conftest as dns_conftest
from tests.sip.test_tls import connect, served_serial
from tests.tlscerts import issue

named = dns_conftest.named  # the fixture: BIND as a secondary of our zone

DOMAINS = ("*.teams.example.com", "teams.example.com")
CHALLENGE = "_acme-challenge.teams.example.com"


class Pebble:
    """One Pebble process; :meth:`restart` keeps its ports (so its directory URL), as a CA
    that comes back with a new root and no memory of accounts."""

    def __init__(
        self, where: Path, dns_port: int, validity: int, eab: dict[str, str] | None = None
    ) -> None:
        self.where = where
        self.ca = trustme.CA()
        self.ca_file = where / "pebble-https-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(where / "pebble.pem"))
        leaf.private_key_pem.write_to_path(str(where / "pebble.key"))
        self.port, self.management = free_port(), free_port()
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.validity = validity
        self.eab = eab or {}
        self.proc: subprocess.Popen[str] | None = None
        self.start(dns_port)

    def start(self, dns_port: int) -> None:
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management}",
                "certificate": str(self.where / "pebble.pem"),
                "privateKey": str(self.where / "pebble.key"),
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab),
                "externalAccountMACKeys": self.eab,
                "certificateValidityPeriod": self.validity,
            }
        }
        path = self.where / "pebble.json"
        path.write_text(json.dumps(config))
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",  # every order validates through our DNS
        }
        self.log = (self.where / "pebble.log").open("a")
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(path), "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.get(f"https://127.0.0.1:{self.port}/dir")
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("pebble did not start: " + (self.where / "pebble.log").read_text())

    def get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return bytes(resp.read())

    def root(self) -> str:
        """Pebble's root of this run (PEM), to verify what it issued."""
        return self.get(f"https://127.0.0.1:{self.management}/roots/0").decode()

    def restart(self, dns_port: int) -> None:
        self.stop()
        self.start(dns_port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class AriFront:
    """Pebble's directory with renewal information (RFC 9773) added, over HTTPS on loopback:
    Debian's Pebble (2.4) predates ARI (Pebble 2.5), so this front adds ``renewalInfo``,
    pointing at itself, and answers it: the first certificate asked about is due now, any
    other in a year.  Everything else goes to Pebble itself (its directory's other URLs)."""

    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        self.asked: list[str] = []
        front = self
        leaf = pebble.ca.issue_cert("127.0.0.1")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/dir":
                    body = json.loads(pebble.get(pebble.directory))
                    body["renewalInfo"] = f"{front.base}/renewal-info"
                elif self.path.startswith("/renewal-info/"):
                    front.asked.append(self.path.rsplit("/", 1)[1])
                    now = datetime.now(UTC)
                    start = now - timedelta(minutes=2)
                    if front.asked[-1] != front.asked[0]:
                        start = now + timedelta(days=365)
                    window = {"start": start, "end": start + timedelta(minutes=1)}
                    body = {"suggestedWindow": {k: v.isoformat() for k, v in window.items()}}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.directory = f"{self.base}/dir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Factory: ``pebble(dns_port, validity=SECONDS, eab={KID: HMAC})``; stopped after the
    test."""
    if shutil.which("pebble") is None:
        missing("pebble is not installed (apt-get install pebble)")
    started: list[Pebble] = []

    def start(dns_port: int, validity: int = 3600, eab: dict[str, str] | None = None) -> Pebble:
        where = tmp_path / f"pebble{len(started)}"
        where.mkdir()
        started.append(Pebble(where, dns_port, validity, eab))
        return started[-1]

    yield start
    for p in started:
        p.stop()


def txt(port: int, name: str) -> list[str]:
    """The TXT values at ``name`` (the wildcard covers it too, so no NXDOMAIN once empty)."""
    reply = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=port, timeout=3)
    assert reply.rcode() == dns.rcode.NOERROR
    return [b"".join(rd.strings).decode() for rrset in reply.answer for rd in rrset]


def stored(cli: Callable[..., Any], name: str) -> dict[str, Any]:
    rows = json.loads(cli("cert", "list", "--json", check=True).stdout)
    return next(r for r in rows if r["name"] == name)


def order(cli: Callable[..., Any], pebble: Pebble | AriFront, dns_port: int, *extra: str) -> Any:
    domains = [arg for d in DOMAINS for arg in ("--domain", d)]
    return cli(
        "cert", "acme", "teams", *domains, "--directory", pebble.directory,
        "--email", "ops@example.com", "--dns", f"127.0.0.1:{dns_port}", *extra,
    )  # fmt: skip


def wait_for(seconds: float, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@dataclass
class Installation:
    """A store with the zone, the wildcard and a hand-made certificate ``teams`` for the base
    and wildcard in service (serial ``old_serial``); a ``serve --dns`` on it and a Pebble
    validating through that DNS."""

    ca: Pebble
    dns_port: int
    server: Any
    old_serial: int


@pytest.fixture
def installation(
    cli: Callable[..., Any],
    serve: Callable[..., Any],
    pebble: Callable[..., Pebble],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Callable[..., Installation]:
    """Factory: ``installation(*SERVE_ARGS, validity=S, eab={KID: HMAC})``."""

    def start(*args: str, validity: int = 3600, eab: dict[str, str] | None = None) -> Installation:
        cli("init", check=True)
        cli("nameserver", "add", "ns1.example.org", check=True)
        cli("zone", "add", "example.com", check=True)
        cli("domain", "add", "*.teams.example.com", check=True)
        old = issue(trustme.CA(), tmp_path / "old", *DOMAINS)
        cli("cert", "add", "teams", "--cert", str(old.chain), "--key", str(old.key), check=True)
        dns_port = free_port()
        ca = pebble(dns_port, validity, eab)
        # Every `sipzone` started from now on trusts Pebble's HTTPS certificate.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.ca_file))
        server = serve("--dns", f"127.0.0.1:{dns_port}", *args)
        return Installation(ca, dns_port, server, old.serial)

    return start


def test_wildcard_and_base_in_one_order_served_live(
    cli: Callable[..., Any], installation: Callable[..., Installation], tmp_path: Path
) -> None:
    tls_port = free_port()
    setup = installation("--sip", f"tls:127.0.0.1:{tls_port}", "--tls-verify-client", "none")
    ca, dns_port, old_serial = setup.ca, setup.dns_port, setup.old_serial
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    with connect(tls_port, "cust42.teams.example.com", insecure) as held:
        assert served_serial(held) == old_serial

    done = order(cli, ca, dns_port)
    assert done.returncode == 0, done.stderr
    assert "renews itself" in done.stdout

    row = stored(cli, "teams")
    assert sorted(row["names"]) == sorted(DOMAINS)
    assert row["managed"] == "acme" and row["renewal"]["failures"] == 0
    wait_for(5, lambda: txt(dns_port, CHALLENGE) == [])  # withdrawn after the order
    # The running edge serves it without a restart, and it chains to Pebble's root.
    root = tmp_path / "pebble-root.pem"
    root.write_text(ca.root())
    trusting = ssl.create_default_context(cafile=str(root))
    wait_for(5, lambda: served(tls_port, trusting) == int(row["serial"], 16))
    # The account key stays in the store and is printed nowhere.
    listing = cli("cert", "list", check=True).stdout
    assert "acme" in listing and "PRIVATE KEY" not in listing + done.stdout + done.stderr


def served(port: int, context: ssl.SSLContext) -> int | None:
    try:
        with connect(port, "cust42.teams.example.com", context) as sock:
            return served_serial(sock)
    except ssl.SSLError:
        return None  # still the old certificate, which this context does not trust


def test_a_node_that_does_not_answer_delays_then_fails_the_order_storing_nothing(
    cli: Callable[..., Any], serve: Callable[..., Any], installation: Callable[..., Installation]
) -> None:
    setup = installation()
    ca, dns_port, other = setup.ca, setup.dns_port, free_port()
    started = time.monotonic()
    result = order(cli, ca, dns_port, "--dns", f"127.0.0.1:{other}", "--wait", "2")
    assert result.returncode == 2
    assert time.monotonic() - started >= 2  # it waited for the second node
    assert f"DNS at 127.0.0.1:{other} did not answer the challenge" in result.stderr
    row = stored(cli, "teams")
    assert int(row["serial"], 16) == setup.old_serial and row["managed"] == "manual"
    wait_for(5, lambda: txt(dns_port, CHALLENGE) == [])

    # With the second node up in time, the same order goes through.
    serve("--dns", f"127.0.0.1:{other}")
    result = order(cli, ca, dns_port, "--dns", f"127.0.0.1:{other}", "--wait", "10")
    assert result.returncode == 0, result.stderr
    assert stored(cli, "teams")["managed"] == "acme"


def test_a_live_node_behind_the_challenge_holds_the_order_until_it_catches_up(
    cli: Callable[..., Any], installation: Callable[..., Installation], sqlite_url: str
) -> None:
    """Item 1: the CA is told to look once every live node serves the challenge.  A node's
    heartbeat says which revision it applied; one that beats but lags (its feed stuck) holds
    the order, and a node gone quiet is not waited for."""
    setup = installation()
    store = Store(sqlite_url)

    def beat(node: str, revision: int, seen: datetime) -> None:
        store.write_views(node, [], NodeBeat("eu1", ("192.0.2.9",), revision, seen))

    stop = threading.Event()

    def stuck_then_caught_up() -> None:
        # Beats as a live node does, at an old revision; after 4 s it reports the store's.
        started = time.monotonic()
        while not stop.is_set():
            caught_up = time.monotonic() - started > 4
            beat("lagging", store.revision() if caught_up else 1, datetime.now(UTC))
            stop.wait(0.5)

    beat("gone", 1, datetime.now(UTC))
    with store.engine.begin() as conn:  # its last heartbeat five minutes ago: not waited for
        quiet = datetime.now(UTC) - timedelta(minutes=5)
        conn.execute(nodes.update().where(nodes.c.name == "gone").values(seen_at=quiet))
    beat("lagging", 1, datetime.now(UTC))
    try:
        failed = order(cli, setup.ca, setup.dns_port, "--wait", "2")
        assert failed.returncode == 2
        behind = failed.stderr.split("had not applied revision")[0]
        assert "lagging" in behind and "gone" not in behind, failed.stderr
        assert stored(cli, "teams")["managed"] == "manual"  # nothing stored

        beater = threading.Thread(target=stuck_then_caught_up)
        beater.start()
        started = time.monotonic()
        done = order(cli, setup.ca, setup.dns_port, "--wait", "30")
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started >= 4  # it waited for the lagging node
        assert stored(cli, "teams")["managed"] == "acme"
    finally:
        stop.set()
        store.close()


def test_bad_input_is_refused_before_anything_is_ordered(cli: Callable[..., Any]) -> None:
    cli("init", check=True)
    base = ["cert", "acme", "teams", "--email", "ops@example.com"]
    cases = [
        ([*base, "--domain", "a.example.com", "--directory", "ftp://ca/dir"], "https URL"),
        ([*base, "--domain", "bad_name.example.com", "--directory", "https://ca.test/dir"], "'_'"),
        (
            [
                *base,
                "--domain",
                "a.example.com",
                "--directory",
                "https://ca.test/dir",
                "--key-type",
                "dsa",
            ],
            "ec256",
        ),
        (
            [
                *base,
                "--domain",
                "a.example.com",
                "--directory",
                "https://ca.test/dir",
                "--eab-kid",
                "k",
            ],
            "together",
        ),
        (
            [
                "cert",
                "acme",
                "teams",
                "--email",
                "nobody",
                "--domain",
                "a.example.com",
                "--directory",
                "https://ca.test/dir",
            ],
            "address",
        ),
    ]
    # No zone holds the name: refused before any CA is asked (this directory does not exist).
    cases.append(
        ([*base, "--domain", "a.example.org", "--directory", "https://127.0.0.1:1/dir"],
         "none of sipzone's zones"),
    )  # fmt: skip
    for args, words in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
    assert json.loads(cli("cert", "list", "--json", check=True).stdout) == []


def test_renewal_by_short_validity_survives_a_refusing_ca(
    cli: Callable[..., Any], installation: Callable[..., Installation]
) -> None:
    # Due for renewal after 10 s.
    setup = installation("--acme-check", "0.5", "--acme-retry", "1", validity=15)
    ca, dns_port, server, nowhere = setup.ca, setup.dns_port, setup.server, free_port()
    assert order(cli, ca, dns_port).returncode == 0
    first = stored(cli, "teams")["serial"]
    # The CA comes back unable to see our DNS: every validation fails.
    ca.restart(nowhere)
    wait_for(40, lambda: stored(cli, "teams")["renewal"]["failures"] >= 2)
    row = stored(cli, "teams")
    assert row["serial"] == first  # the certificate in service stays
    assert "validation failed" in row["renewal"]["last_error"]
    assert any("renewing certificate teams failed" in line for line in server.lines)
    # It sees our DNS again: the next retry renews.
    ca.restart(dns_port)
    wait_for(40, lambda: stored(cli, "teams")["serial"] != first)
    row = stored(cli, "teams")
    assert row["renewal"]["failures"] == 0 and row["renewal"]["last_error"] is None
    assert any("certificate teams renewed" in line for line in server.lines)


def test_renewal_waits_until_the_secondary_serves_the_challenge(
    cli: Callable[..., Any],
    installation: Callable[..., Installation],
    named: type[dns_conftest.Named],
) -> None:
    """`serve` tells the CA to look only once every server publishing the zone answers the
    TXT: its own DNS and each secondary it sends NOTIFY to (BIND here)."""
    bind_port = free_port()
    setup = installation(
        "--allow-transfer", "127.0.0.0/8", "--notify", f"127.0.0.1:{bind_port}",
        "--acme-check", "0.5", "--acme-retry", "1", "--acme-wait", "3", validity=15,
    )  # fmt: skip
    ca, dns_port = setup.ca, setup.dns_port
    assert order(cli, ca, dns_port).returncode == 0  # due for renewal after 10 s
    first = stored(cli, "teams")["serial"]
    # The secondary is down: the renewal waits for it, then gives up without asking the CA.
    wait_for(40, lambda: stored(cli, "teams")["renewal"]["failures"] >= 1)
    row = stored(cli, "teams")
    assert row["serial"] == first
    assert f"DNS at 127.0.0.1:{bind_port} did not answer" in row["renewal"]["last_error"]
    # BIND comes up, transfers the zone and, on NOTIFY, each new challenge: the retry renews.
    bind = named(bind_port, dns_port)
    wait_for(60, lambda: stored(cli, "teams")["serial"] != first)
    assert "transfer of 'example.com/IN'" in bind.log.read_text()
    assert stored(cli, "teams")["renewal"]["failures"] == 0


def test_renewal_information_from_the_ca_says_when(
    cli: Callable[..., Any], installation: Callable[..., Installation]
) -> None:
    """With ARI the CA decides: a certificate of an hour, two thirds of which are 40 minutes
    away, renews at once when the CA's window has begun; its successor's window is a year
    away, so it stays."""
    setup = installation("--acme-check", "0.5")
    front = AriFront(setup.ca)
    try:
        assert order(cli, front, setup.dns_port).returncode == 0
        first = stored(cli, "teams")["serial"]
        wait_for(40, lambda: stored(cli, "teams")["serial"] != first)
        wait_for(10, lambda: len(front.asked) >= 2)  # then about the new one, not due
        second = stored(cli, "teams")
        assert second["renewal"]["failures"] == 0
        assert front.asked[0] != front.asked[1]  # certificate ids: two serials
        assert any("certificate teams renewed" in line for line in setup.server.lines)
    finally:
        front.close()


def test_metrics_report_renewals(
    cli: Callable[..., Any], installation: Callable[..., Installation]
) -> None:
    metrics = free_port()
    setup = installation("--metrics", f"127.0.0.1:{metrics}", "--acme-check", "0.2")
    ca, dns_port = setup.ca, setup.dns_port
    assert order(cli, ca, dns_port).returncode == 0

    def text() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    wait_for(5, lambda: 'sipzone_acme_days_left{certificate="teams"}' in text())
    body = text()
    assert re.search(r'sipzone_acme_renewal_failures\{certificate="teams"\} 0\.0', body)
    assert re.search(
        r'sipzone_acme_last_renewal_timestamp_seconds\{certificate="teams"\} 1\.\d+e', body
    )
    assert re.search(r'sipzone_acme_days_left\{certificate="teams"\} 0\.0[0-9]', body)


def test_a_ca_requiring_external_account_binding(
    cli: Callable[..., Any], installation: Callable[..., Installation]
) -> None:
    hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    setup = installation(eab={"kid-1": hmac})
    ca, dns_port = setup.ca, setup.dns_port
    refused = order(cli, ca, dns_port)
    assert refused.returncode == 2
    assert "requires an external account binding" in refused.stderr
    assert stored(cli, "teams")["managed"] == "manual"
    wrong = order(cli, ca, dns_port, "--eab-kid", "kid-2", "--eab-hmac", hmac)
    assert wrong.returncode == 2 and "no certificate was stored" in wrong.stderr
    done = order(cli, ca, dns_port, "--eab-kid", "kid-1", "--eab-hmac", hmac)
    assert done.returncode == 0, done.stderr
    assert stored(cli, "teams")["managed"] == "acme"
    assert hmac not in done.stdout + done.stderr + cli("cert", "list", "--json").stdout
