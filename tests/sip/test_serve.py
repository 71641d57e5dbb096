"""End to end through the real console script: `sipzone serve --sip ...` on a SQLite store,
domains changed with the CLI while it runs."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

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
