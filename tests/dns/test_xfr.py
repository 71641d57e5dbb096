"""Feeding production DNS: AXFR, a real BIND secondary following NOTIFY, and zone export."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.export import export_zone
from sipzone.model.errors import NotFound
from tests.conftest import free_port
from tests.dns.conftest import LiveDns, dig, need, snapshot, with_rules

ALLOW = DnsConfig(allow_transfer=("127.0.0.0/8",))


def test_axfr_to_allowed_clients_only(live_dns: type[LiveDns]) -> None:
    port = live_dns(snapshot(revision=5), ALLOW).port
    r = dig(port, "example.com", "AXFR")
    records = r.text_records()
    assert records[0][3] == "SOA" and records[-1][3] == "SOA"
    owners = {(row[0], row[3]) for row in records}
    assert ("voip.example.com.", "NAPTR") in owners
    assert ("*.teams.example.com.", "A") in owners
    assert ("_sips._tcp.teams.example.com.", "SRV") in owners
    assert ("_sip._udp.voip.example.com.", "SRV") in owners
    # IXFR: a secondary at our serial gets the SOA alone, an older one the whole zone.
    current = dig(port, "example.com", "IXFR=5").text_records()
    assert [row[3] for row in current] == ["SOA"]
    older = dig(port, "example.com", "IXFR=4").text_records()
    assert len(older) == len(records)
    closed = live_dns(snapshot(), DnsConfig(allow_transfer=("192.0.2.0/24",)))
    refused = dig(closed.port, "example.com", "AXFR")
    assert "Transfer failed" in refused.text
    assert refused.text_records() == []


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


COMPARED = [
    ("voip.example.com", "A"),
    ("voip.example.com", "AAAA"),
    ("voip.example.com", "NAPTR"),
    ("_sips._tcp.voip.example.com", "SRV"),
    ("_sip._udp.voip.example.com", "SRV"),
    ("cust7.teams.example.com", "A"),
    ("mail.example.com", "MX"),
    ("site-b.example.com", "A"),
    ("example.com", "NS"),
    ("nope.example.com", "A"),
    ("b.example.com", "A"),
    ("voip.example.com", "MX"),
]


def test_bind_secondary_transfers_answers_the_same_and_follows_notify(
    live_dns: type[LiveDns], named: type[Named]
) -> None:
    first = snapshot(revision=100)
    bind_port = free_port()
    live = live_dns(
        first, DnsConfig(allow_transfer=("127.0.0.0/8",), notify=(f"127.0.0.1:{bind_port}",))
    )
    bind = named(bind_port, live.port)
    bind.wait_serial(100)
    for name, rdtype in COMPARED:
        # A secondary has no regions: compare with a client no site network claims.
        ours = dig(live.port, name, rdtype, "+subnet=203.0.113.0/24")
        theirs = dig(bind.port, name, rdtype)
        assert (ours.status, sorted(ours.rdata())) == (theirs.status, sorted(theirs.rdata()))
    # Now change the zone: sipzone sends NOTIFY (BIND's refresh is an hour away), and BIND
    # transfers the new serial.
    live.publish(with_rules(first, added=["fresh.example.com"]))
    bind.wait_serial(101)
    assert sorted(dig(bind.port, "fresh.example.com", "A").rdata("A")) == [
        "192.0.2.10",
        "198.51.100.10",
    ]
    assert "received notify" in bind.log.read_text().lower()


def test_export_passes_named_checkzone(tmp_path: Path) -> None:
    snap = snapshot(revision=3)
    for region in (None, "us"):
        text = export_zone(snap, "example.com", region=region)
        path = tmp_path / f"zone-{region}"
        path.write_text(text)
        check = subprocess.run(
            [need("named-checkzone"), "example.com", str(path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "loaded serial 3" in check.stdout
    assert "*.teams 300 IN NAPTR" in text
    us = [line for line in text.splitlines() if line.startswith("_sip._udp.voip ")]
    assert us[0].endswith("site-b") and " 10 50 " in us[0]
    with pytest.raises(NotFound):
        export_zone(snap, "example.com", region="mars")
    with pytest.raises(NotFound):
        export_zone(snap, "example.org")
