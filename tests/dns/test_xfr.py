"""Feeding production DNS: AXFR, a real BIND secondary following NOTIFY, and zone export."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from prometheus_client import REGISTRY

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from sipzone.dns.export import export_zone, zone_file
from sipzone.dns.records import Records
from sipzone.dns.xfr import MESSAGE_TARGET, Omissions, transfer
from sipzone.model.errors import NotFound
from sipzone.model.mail import SRV_NAMES
from sipzone.model.snapshot import Snapshot
from sipzone.sip import SipConfig
from sipzone.sip.transport import start_sip
from tests.conftest import Cli, free_port
from tests.dns.conftest import RULES, LiveDns, Named, dig, need, snapshot, with_rules

ALLOW = DnsConfig(allow_transfer=("127.0.0.0/8",))
Record = tuple[str, str, str]  # owner, type, rdata: one RR as text, lower case


def transferred(snap: Snapshot, zone: str = "example.com", qtype: str = "AXFR") -> list[bytes]:
    """The response messages to an AXFR of ``zone``, made in-process."""
    query = dns.message.make_query(zone, qtype)
    return list(transfer(Records(snap, ALLOW), query, "127.0.0.1", ALLOW.allow_transfer))


def rrs(messages: Sequence[bytes]) -> list[Record]:
    """Every RR of the messages in order, each message read on its own (its compression
    pointers must resolve inside it, its answer count must match its records); record by
    record, as dnspython's message parser takes quadratic time over thousands of RRs."""
    out = []
    for wire in messages:
        questions, answers = struct.unpack_from("!HH", wire, 4)
        at = 12
        for _ in range(questions):
            at += dns.name.from_wire(wire, at)[1] + 4
        for _ in range(answers):
            name, used = dns.name.from_wire(wire, at)
            rdtype, rdclass, _, size = struct.unpack_from("!HHIH", wire, at + used)
            rd = dns.rdata.from_wire(rdclass, rdtype, wire, at + used + 10, size)
            at += used + 10 + size
            record = (name.to_text().lower(), dns.rdatatype.to_text(rdtype), rd.to_text().lower())
            out.append(record)
        assert at == len(wire)
    return out


def as_served(authority: Authority, owner: str, rdtype: str) -> list[Record]:
    """What the live server answers for (owner, type) to a client in no site's network."""
    query = dns.message.make_query(owner, rdtype)
    reply = dns.message.from_wire(authority.respond(query.to_wire(), "203.0.113.1", tcp=True))
    return [
        (owner, rdtype, rd.to_text().lower()) for rrset in reply.answer for rd in rrset
    ]  # fmt: skip


NESTED = snapshot(
    revision=9,
    rules=[
        *RULES,
        ("example.com", "provider"),  # the apex is a SIP domain too
        ("*.example.com", "provider"),  # a wildcard whose base is the apex
        ("teams.example.com", "provider"),  # an exact rule on a wildcard's base
        ("site-a.example.com", "provider"),  # a site host that is a SIP domain
        ("mail.example.com", "provider"),  # so is the email domain
        ("x.sub.example.com", "provider"),  # nested zone: not example.com's
        ("*.sub.example.com", "provider"),
        ("voip.example.org", "provider"),  # in no zone of ours
    ],
    zones=("example.com", "sub.example.com"),
)
SERVICE_LABELS = ("_sips._tcp.", "_sip._tcp.", "_sip._udp.")


def with_services(*domains: str) -> set[str]:
    return {n for d in domains for n in (d, *(p + d for p in SERVICE_LABELS))}


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


# What the email domain brings (RFC 6186 service names, autoconfig hosts).
MAIL_NAMES = {
    *(f"{label}._tcp.mail.example.com." for label, _ in SRV_NAMES),
    "autoconfig.mail.example.com.",
    "autodiscover.mail.example.com.",
}


def test_transfer_lists_every_record_once_as_the_server_answers_it() -> None:
    authority = Authority(NESTED, ALLOW)
    for zone, owners in {
        "example.com": with_services(
            "example.com.", "voip.example.com.", "geo.example.com.", "a.b.example.com.",
            "teams.example.com.", "site-a.example.com.", "mail.example.com.",
        ) | {"*.example.com.", "*.teams.example.com.", "site-b.example.com."} | MAIL_NAMES,
        "sub.example.com": with_services("x.sub.example.com.", "sub.example.com.")
        | {"*.sub.example.com.", "site-a.sub.example.com.", "site-b.sub.example.com."}
        - {"sub.example.com."},
    }.items():  # fmt: skip
        messages = transferred(NESTED, zone)
        records = rrs(messages)
        assert records[0][:2] == (zone + ".", "SOA") and records[-1] == records[0]
        body = records[1:-1]
        assert len(body) == len(set(body)), [r for r, n in Counter(body).items() if n > 1]
        assert {r[0] for r in body} == owners
        assert all(len(m) <= MESSAGE_TARGET for m in messages)
        # Every record set is what the live server answers (the default region view), except
        # NAPTR at a wildcard, which a zone file points at the base's service names.
        sets: dict[tuple[str, str], list[Record]] = {}
        for record in records[1:]:
            sets.setdefault(record[:2], []).append(record)
        for (owner, rdtype), rrset in sets.items():
            if owner.startswith("*.") and rdtype == "NAPTR":
                assert {r[2].split()[-1] for r in rrset} == {p + owner[2:] for p in SERVICE_LABELS}
                continue
            assert sorted(rrset) == sorted(as_served(authority, owner, rdtype)), owner
        # A zone file export holds the same records.
        exported = {
            (name.to_text().lower(), dns.rdatatype.to_text(rd.rdtype), rd.to_text().lower())
            for name, _, rd in dns.zone.from_text(
                export_zone(NESTED, zone), relativize=False
            ).iterate_rdatas()
        }
        assert exported == set(records)
    # The apex NAPTR (the apex is a SIP domain here) and a site host that is a SIP domain.
    records = rrs(transferred(NESTED))
    # Asked in another case (owners point at the question as asked), the same records.
    assert rrs(transferred(NESTED, "Example.COM")) == records
    assert ("example.com.", "NAPTR", '30 10 "s" "sip+d2u" "" _sip._udp.example.com.') in records
    assert {r[1] for r in records if r[0] == "site-a.example.com."} == {"A", "AAAA", "NAPTR"}


def test_a_big_transfer_fills_messages_and_compresses_owners() -> None:
    rules = [*RULES, *((f"cust{i}.example.com", "provider") for i in range(500))]
    messages = transferred(snapshot(rules=rules))
    assert 5 < len(messages) < 30
    assert all(MESSAGE_TARGET - 1000 < len(m) <= MESSAGE_TARGET for m in messages[:-1])
    records = rrs(messages)
    assert len(records) == len(set(records)) + 1  # the SOA, twice
    assert sum(r[0] == "_sip._udp.cust499.example.com." for r in records) == 2  # two sites
    # A domain's records cost its name once: the rest are pointers (each RR: 2 + 10 + RDATA).
    one = next(m for m in messages if b"\x07cust250" in m)
    assert one.count(b"cust250") == 4  # the owner, and in each of the three NAPTR RDATA
    assert struct.unpack("!H", one[6:8])[0] > 300  # answer count


def axfr_lines(port: int) -> Counter[str]:
    """The records `dig AXFR` prints, one normalised line each, counted."""
    out = subprocess.run(
        [need("dig"), "@127.0.0.1", "-p", str(port), "example.com", "AXFR", "+nocookie"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return Counter(
        " ".join(line.lower().split()) for line in out.splitlines() if line and line[0] != ";"
    )


def test_bind_secondary_loads_thousands_of_names_record_for_record(
    live_dns: type[LiveDns], named: type[Named], tmp_path: Path
) -> None:
    rules = [
        *RULES,
        *((f"d{i}.example.com", "provider") for i in range(2000)),
        *((f"*.w{i}.example.com", "provider") for i in range(200)),
    ]
    snap = snapshot(revision=42, rules=rules)
    live = live_dns(snap, ALLOW)
    bind = named(free_port(), live.port)
    bind.wait_serial(42, within=60)
    ours = axfr_lines(live.port)
    # 11 records a rule: 2 A, 1 AAAA, 3 NAPTR, 2 SRV each for _sip._udp and _sip._tcp, and
    # 1 for _sips._tcp (only site-b offers TLS).
    assert ours.total() == len(rrs(transferred(snapshot(revision=42)))) + 11 * 2200
    assert max(ours.values()) == 2  # the SOA, first and last; everything else once
    # BIND loaded every record and serves exactly the same zone back.
    assert axfr_lines(bind.port) == ours
    assert dig(bind.port, "_sip._udp.d1999.example.com", "SRV").status == "NOERROR"
    path = tmp_path / "export.zone"
    path.write_text(export_zone(snap, "example.com"))
    check = subprocess.run(
        [need("named-checkzone"), "example.com", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "loaded serial 42" in check.stdout, check.stdout


class Reader(threading.Thread):
    """An AXFR client over TCP that reads slowly for ``slow_for`` seconds, then at full speed,
    until a message ends with the RR ``last_rr`` (the closing SOA, owner aside).  It keeps how
    long the first whole message took, the answer count and the last message."""

    def __init__(self, port: int, slow_for: float, last_rr: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.slow_for = slow_for
        self.last_rr = last_rr
        self.first: float | None = None
        self.messages = 0
        self.answers = 0
        self.last = b""
        query = dns.message.make_query("example.com", "AXFR").to_wire()
        self.sent = time.monotonic()
        self.sock.sendall(struct.pack("!H", len(query)) + query)

    def run(self) -> None:
        buf = bytearray()
        while not self.last.endswith(self.last_rr) or self.messages < 2:
            slow = time.monotonic() - self.sent < self.slow_for
            chunk = self.sock.recv(4096 if slow else 1 << 20)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + (size := struct.unpack_from("!H", buf)[0]):
                if self.first is None:
                    self.first = time.monotonic() - self.sent
                self.last = bytes(buf[2 : 2 + size])
                del buf[: 2 + size]
                self.messages += 1
                self.answers += struct.unpack_from("!H", self.last, 6)[0]
            if slow:
                time.sleep(0.01)
        self.sock.close()


def test_a_transfer_of_100000_domains_streams_while_dns_and_sip_answer(
    live_dns: type[LiveDns],
) -> None:
    n = 100_000
    snap = snapshot(
        revision=3, rules=[*RULES, *((f"c{i}.example.com", "provider") for i in range(n))]
    )
    small = transferred(snapshot(revision=3))
    live = live_dns(snap, ALLOW)
    sip_port = free_port()
    sip = live.call(start_sip(SipConfig(listen=(f"udp:127.0.0.1:{sip_port}",)), live.holder))
    options = (
        "OPTIONS sip:ping@voip.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-x{i}\r\nMax-Forwards: 70\r\n"
        "To: <sip:ping@voip.example.com>\r\nFrom: <sip:p@example.net>;tag=1\r\n"
        "Call-ID: x{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    latencies: dict[str, list[float]] = {"dns": [], "sip": []}
    try:
        soa = Records(snap, ALLOW).soa("example.com")
        rdata = soa[0].to_wire()
        last_rr = struct.pack("!HHIH", 6, 1, soa.ttl, len(rdata)) + rdata
        reader = Reader(live.port, slow_for=1.5, last_rr=last_rr)
        reader.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            udp.settimeout(2)
            me = udp.getsockname()[1]
            i = 0
            while reader.is_alive():
                i += 1
                for kind, port, data in (
                    ("dns", live.port, dns.message.make_query(f"c{i}.example.com", "A").to_wire()),
                    ("sip", sip_port, options.format(port=me, i=i).encode()),
                ):
                    start = time.monotonic()
                    udp.sendto(data, ("127.0.0.1", port))
                    reply = udp.recv(65535)
                    latencies[kind].append(time.monotonic() - start)
                    assert reply.startswith(b"SIP/2.0 200") if kind == "sip" else reply[3] & 15 == 0
                time.sleep(0.02)
        reader.join(60)
    finally:
        live.call(sip.close())
    assert reader.first is not None and reader.first < 1.0, reader.first
    assert reader.answers == len(rrs(small)) + 11 * n  # see the BIND test: 11 a rule
    last = rrs([reader.last])
    assert last[-1][1] == "SOA" and " 3 " in last[-1][2]
    # Queries were asked all along the transfer, slow reading and fast, and none waited for
    # it: a transfer that held the loop stalled answers for the whole transfer (128 s and more
    # before issue 7).  The bound leaves room for a loaded CI box and a garbage collection
    # over the 100,000-domain heap; the latencies themselves are measured by bench/dns/xfr.py.
    assert len(latencies["dns"]) >= 20, latencies
    assert max(latencies["dns"]) < 2.0 and max(latencies["sip"]) < 2.0, latencies


def long_name(total: int, below: str = "example.com") -> str:
    """A name of exactly ``total`` octets (as text, without the trailing dot) below ``below``."""
    labels = []
    room = total - len(below) - 1
    while room > 63:
        take = min(63, room - 2)
        labels.append("a" * take)
        room -= take + 1
    labels.append("b" * room)
    return ".".join([*labels, below])


def omitted_total() -> float:
    return REGISTRY.get_sample_value("sipzone_dns_omitted_records_total") or 0.0


def test_names_too_long_for_their_service_names_are_left_out_not_fatal(
    live_dns: type[LiveDns], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d243, d250, b252 = long_name(243), long_name(250), long_name(252)
    # Built directly: the store and the CLI refuse such names today, older stores may hold them.
    snap = snapshot(
        revision=5,
        rules=[*RULES, (d243, "provider"), (d250, "provider"), ("*." + b252, "provider")],
    )
    before = omitted_total()
    caplog.set_level(logging.WARNING, logger="sipzone.dns")
    records = axfr_lines(live_dns(snap, ALLOW).port)
    # 12 left out: _sips._tcp.d243 and its NAPTR; d250's three service names and three
    # NAPTR; *.b252 itself and b252's three service names.
    assert omitted_total() - before == 12
    assert [line.split()[3] for line in records].count("soa") == 1 and records.total() > 50
    owners = {line.split()[0] for line in records}
    assert {d243 + ".", d250 + ".", f"_sip._tcp.{d243}."} <= owners
    assert not {f"_sips._tcp.{d243}.", f"_sip._udp.{d250}.", f"*.{b252}."} & owners
    naptr = [line for line in records if line.startswith(d243 + ". ") and " naptr " in line]
    assert len(naptr) == 2
    omitted = Omissions("example.com")
    text = "".join(zone_file(snap, "example.com", omitted=omitted))
    assert omitted.count == 12
    path = tmp_path / "long.zone"
    path.write_text(text)
    check = subprocess.run(
        [need("named-checkzone"), "example.com", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    # 24 omissions, one log line: the rest wait for the next minute's line and its count.
    lines = [r for r in caplog.records if "longer than 255 octets" in r.getMessage()]
    assert len(lines) == 1 and f"_sips._tcp.{d243}" in lines[0].getMessage()


def test_cli_export_leaves_out_a_stored_name_too_long(cli: Cli, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from sipzone.store.repository import Store
    from sipzone.store.schema import domains

    url = f"sqlite:///{tmp_path / 'sipzone.db'}"
    store = Store(url)
    store.init()
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    store.add_site("s1", vips=["192.0.2.1"], region="eu")
    store.add_domain("voip.example.com")
    store.close()
    # A name the CLI refuses now, as an older store may hold it: written directly.
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        owner = conn.execute(sa.text("SELECT id FROM tenants WHERE name = 'provider'")).scalar()
        conn.execute(
            domains.insert().values(name=long_name(250), owner_id=owner, wildcard=False, revision=4)
        )
    engine.dispose()
    result = cli("zone", "export", "example.com")
    assert result.returncode == 0, result.stderr
    # The store read leaves the rule out (one line) before the DNS sees it; the transfer's own
    # guard for names over 255 octets is tested above with a snapshot built directly.
    assert "1 stored SIP domain rule(s) skipped as invalid" in result.stderr
    assert long_name(250) not in result.stdout
    assert "_sip._udp.voip 300 IN SRV 10 100 5060 s1" in result.stdout
    path = tmp_path / "cli.zone"
    path.write_text(result.stdout)
    check = subprocess.run(
        [need("named-checkzone"), "example.com", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
