"""DNS fixtures: in-memory snapshots, a live authority on loopback, and `dig` against it."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.server import DnsService, start_dns
from sipzone.model.snapshot import Delta, Site, Snapshot, SnapshotHolder
from sipzone.model.tenancy import TenancyTree
from tests.conftest import missing
from tests.harness import ServiceThread

ip = ipaddress.ip_address
net = ipaddress.ip_network

# The benchmark's data: site-a serves loopback clients first.
SITE_A = Site(
    "site-a",
    "eu",
    (ip("192.0.2.10"), ip("2001:db8::10")),
    networks=(net("127.0.0.0/8"), net("2001:db8:a::/48")),
    order=1,
)
SITE_B = Site(
    "site-b",
    "us",
    (ip("198.51.100.10"),),
    networks=(net("198.51.100.0/24"),),
    ports={"udp": 5070, "tcp": 5070, "tls": 5071},
    weight=50,
    order=2,
)
RULES = [
    ("voip.example.com", "provider"),
    ("*.teams.example.com", "provider"),
    ("geo.example.com", "provider"),
    ("a.b.example.com", "provider"),
]


def snapshot(
    revision: int = 1,
    rules: Sequence[tuple[str, str]] = tuple(RULES),
    sites: tuple[Site, ...] = (SITE_A, SITE_B),
    zones: tuple[str, ...] = ("example.com",),
    email_domain: str | None = "mail.example.com",
    settings: dict[str, str] | None = None,
) -> Snapshot:
    return Snapshot.build(
        revision,
        TenancyTree([]),
        list(rules),
        sites=sites,
        zones=zones,
        email_domain=email_domain,
        settings=settings,
    )


def with_rules(old: Snapshot, added: Sequence[str] = (), removed: Sequence[str] = ()) -> Snapshot:
    """The next revision of ``old`` with rules changed, carrying a Delta like the store does."""
    provider = old.tenants.view("provider")
    matcher = old.matcher.with_changes(((r, provider) for r in added), removed)
    return replace(
        old, revision=old.revision + 1, matcher=matcher, delta=Delta(tuple(added), tuple(removed))
    )


class LiveDns(ServiceThread):
    """`start_dns` running on its own uvloop thread, fed from a holder the test controls."""

    def __init__(self, first: Snapshot, config: DnsConfig) -> None:
        super().__init__(SnapshotHolder(first))
        self.service: DnsService = self.call(start_dns(config, self.holder))
        self.port = self.service.address[1]

    async def settle(self) -> None:
        await self.service.settle()


@pytest.fixture
def live_dns() -> Iterator[type[LiveDns]]:
    """Factory: ``live_dns(snapshot, DnsConfig(...))``; every server is closed after the test."""
    started: list[LiveDns] = []

    def start(first: Snapshot | None = None, config: DnsConfig | None = None) -> LiveDns:
        cfg = config or DnsConfig()
        server = LiveDns(first or snapshot(), replace(cfg, listen="127.0.0.1:0"))
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.close()


@dataclass
class Dig:
    """One `dig` answer, parsed from its text output."""

    status: str
    flags: set[str]
    answer: list[list[str]]
    authority: list[list[str]]
    additional: list[list[str]]
    question: list[str]
    text: str

    def text_records(self) -> list[list[str]]:
        """Records of output without sections (AXFR)."""
        return [line.split() for line in self.text.splitlines() if line and line[0] != ";"]

    def rdata(self, rdtype: str | None = None) -> list[str]:
        return [" ".join(r[4:]) for r in self.answer if rdtype is None or r[3] == rdtype]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} is not installed (apt-get install bind9 bind9-utils bind9-dnsutils)")
    return path


def dig(port: int, *args: str, server: str = "127.0.0.1") -> Dig:
    """Run `dig @server -p port ARGS` and parse the sections it prints."""
    out = subprocess.run(
        [need("dig"), f"@{server}", "-p", str(port), "+time=2", "+tries=2", "+nocookie", *args],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    status, flags = "", set()
    sections: dict[str, list[list[str]]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    question: list[str] = []
    current = None
    for line in out.splitlines():
        if line.startswith(";; ->>HEADER<<-"):
            status = line.split("status: ")[1].split(",")[0]
        elif line.startswith(";; flags:"):
            flags = set(line.split(";")[2].split(":")[1].split())
        elif line.startswith(";; QUESTION SECTION"):
            current = "QUESTION"
        elif line.startswith(";; ") and " SECTION:" in line:
            current = line.split()[1]
        elif not line.strip():
            current = None
        elif current == "QUESTION":
            question = line.lstrip(";").split()
        elif current in sections and not line.startswith(";"):
            sections[current].append(line.split())
    return Dig(
        status,
        flags,
        sections["ANSWER"],
        sections["AUTHORITY"],
        sections["ADDITIONAL"],
        question,
        out,
    )


class Named:
    """BIND as a secondary of our zone, on loopback, in a temporary directory."""

    def __init__(self, tmp: Path, port: int, primary_port: int) -> None:
        self.port = port
        conf = tmp / "named.conf"
        conf.write_text(
            f"""
options {{
    directory "{tmp}";
    pid-file "{tmp}/named.pid";
    session-keyfile "{tmp}/session.key";
    managed-keys-directory "{tmp}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
zone "example.com" {{
    type secondary;
    primaries {{ 127.0.0.1 port {primary_port}; }};
    file "{tmp}/example.com.db";
    allow-transfer {{ 127.0.0.1; }};
}};
"""
        )
        self.log = tmp / "named.log"
        self.proc = subprocess.Popen(
            [need("named"), "-g", "-n", "1", "-c", str(conf)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def serial(self) -> int | None:
        soa = dig(self.port, "example.com", "SOA", "+norec").rdata("SOA")
        return int(soa[0].split()[2]) if soa else None

    def wait_serial(self, serial: int, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.serial() == serial:
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.2)
        pytest.fail(f"named never served serial {serial}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def named(tmp_path: Path) -> Iterator[type[Named]]:
    started: list[Named] = []

    def start(port: int, primary_port: int) -> Named:
        server = Named(tmp_path, port, primary_port)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()
