"""End to end through the real console script: `sipzone serve --sip ...` on a SQLite store,
domains changed with the CLI while it runs."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS
from sipzone.store.repository import Store
from tests.sip.conftest import free_port


def options(port: int, domain: str, call: str) -> bytes:
    return (
        f"OPTIONS sip:ping@{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call}\r\nMax-Forwards: 70\r\n"
        f"To: <sip:ping@{domain}>\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\nCall-ID: {call}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Pinger:
    def __init__(self, edge_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.port = self.sock.getsockname()[1]
        self.dest = ("127.0.0.1", edge_port)
        self.n = 0

    def status(self, domain: str) -> int:
        self.n += 1
        self.sock.sendto(options(self.port, domain, f"serve-{self.n}"), self.dest)
        while True:
            reply = self.sock.recv(65535)
            if f"Call-ID: serve-{self.n}\r\n".encode() in reply:
                return int(reply.split(b" ", 2)[1])

    def until(self, domain: str, status: int, limit: float = 10.0) -> float:
        """Seconds until ``domain`` answers ``status`` (polls; fails after ``limit``)."""
        start = time.monotonic()
        while self.status(domain) != status:
            assert time.monotonic() - start < limit, f"{domain} never answered {status}"
            time.sleep(0.02)
        return time.monotonic() - start


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_domains_added_and_removed_with_the_cli_apply_live(
    cli: Callable[..., Any], serve: Callable[..., Any]
) -> None:
    cli("init", check=True)
    cli("tenant", "add", "acme", "--upstream", "sip:127.0.0.1:5999", check=True)
    cli("domain", "add", "*.teams.example.com", "--owner", "acme", check=True)
    port, metrics_port = free_port(), free_port()
    serve(
        "--sip",
        f"udp:127.0.0.1:{port},tcp:127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
    )
    ping = Pinger(port)
    assert ping.status("cust1.teams.example.com") == 200
    assert ping.status("live.example.net") == 403

    cli("domain", "add", "live.example.net", "--owner", "acme", check=True)
    added = ping.until("live.example.net", 200)
    cli("domain", "remove", "live.example.net", check=True)
    removed = ping.until("live.example.net", 403)
    print(f"admitted {added:.3f}s after `domain add`, refused {removed:.3f}s after `remove`")

    # The counters reach the metrics endpoint on the edge's next publish.
    deadline = time.monotonic() + 10
    while True:
        text = scrape(metrics_port)
        if 'sipzone_sip_requests_total{method="OPTIONS",verdict="answered"}' in text:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)
    assert 'verdict="rejected"' in text


# -- issue 7: the branch secret ---------------------------------------------------------------


def secrets_of(db: str) -> dict[str, str]:
    store = Store(db)
    try:
        values = store.settings()
    finally:
        store.close()
    return {k: v for k, v in values.items() if k in (BRANCH_SECRET, BRANCH_SECRET_PREVIOUS)}


def test_the_branch_secret_is_made_by_init_rotated_by_the_provider_and_never_shown(
    cli: Callable[..., Any], sqlite_url: str
) -> None:
    outputs = [cli("init", check=True)]
    first = secrets_of(sqlite_url)
    assert list(first) == [BRANCH_SECRET] and re.fullmatch("[0-9a-f]{64}", first[BRANCH_SECRET])
    outputs.append(cli("init", check=True))
    assert secrets_of(sqlite_url) == first  # init again keeps it

    outputs.append(cli("sip", "rotate-secret", check=True))
    rotated = secrets_of(sqlite_url)
    assert rotated[BRANCH_SECRET_PREVIOUS] == first[BRANCH_SECRET]
    assert rotated[BRANCH_SECRET] not in (first[BRANCH_SECRET], "")
    outputs.append(cli("sip", "rotate-secret", check=True))
    again = secrets_of(sqlite_url)
    assert again[BRANCH_SECRET_PREVIOUS] == rotated[BRANCH_SECRET]  # the oldest is gone

    outputs.append(cli("tenant", "add", "acme", check=True))
    refused = cli("sip", "rotate-secret", "--as", "acme")
    assert refused.returncode == 2 and "provider" in refused.stderr
    assert secrets_of(sqlite_url) == again

    outputs.append(cli("email-domain", "set", "mail.example.com", check=True))
    outputs.append(cli("email-domain", "show", check=True))  # the one that reads settings
    outputs.append(cli("email-domain", "show", "--json", check=True))
    shown = "".join(out.stdout + out.stderr for out in [*outputs, refused])
    store = Store(sqlite_url)
    changes = repr(store.changes_since(0))
    store.close()
    for value in [*first.values(), *rotated.values(), *again.values()]:
        assert value not in shown
        assert value not in changes  # the change log names the rotation, not the value


def test_serve_creates_a_missing_secret_and_every_worker_relays_with_it(
    cli: Callable[..., Any], serve: Callable[..., Any], sqlite_url: str
) -> None:
    store = Store(sqlite_url)
    store.init()  # as an old store: no secret yet
    store.close()
    assert secrets_of(sqlite_url) == {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as core:
        core.bind(("127.0.0.1", 0))
        core.settimeout(5)
        core_port = core.getsockname()[1]
        cli("tenant", "add", "acme", "--upstream", f"sip:127.0.0.1:{core_port}", check=True)
        cli("domain", "add", "*.teams.example.com", "--owner", "acme", check=True)
        port = free_port()
        server = serve(
            "--sip", f"udp:127.0.0.1:{port}", "--workers", "2",
            "--tcp-header-timeout", "2", "--tcp-message-timeout", "10",
            "--tcp-max-per-source", "4",
        )  # fmt: skip
        secret = secrets_of(sqlite_url)[BRANCH_SECRET]
        # Each answer leaves the core from a new port, so the kernel spreads them over both
        # workers (SO_REUSEPORT): each must vouch for the branch the other one wrote.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
            phone.bind(("127.0.0.1", 0))
            phone.settimeout(5)
            for n in range(8):
                invite = options(phone.getsockname()[1], "x.teams.example.com", f"w{n}")
                phone.sendto(invite.replace(b"OPTIONS", b"INVITE"), ("127.0.0.1", port))
                forwarded = core.recv(65535).split(b"\r\n\r\n")[0].split(b"\r\n")
                answer = [b"SIP/2.0 180 Ringing"]
                copied = (b"Via", b"From", b"To", b"Call-ID", b"CSeq")
                answer += [h for h in forwarded if h.split(b":")[0] in copied]
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as core_out:
                    core_out.bind(("127.0.0.1", 0))
                    core_out.sendto(
                        b"\r\n".join([*answer, b"Content-Length: 0", b"", b""]),
                        ("127.0.0.1", port),
                    )
                relayed = phone.recv(65535)
                assert relayed.startswith(b"SIP/2.0 180 Ringing"), n
                assert f"Call-ID: w{n}".encode() in relayed
    assert secret not in "".join(server.lines)
