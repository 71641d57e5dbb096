"""IXFR from the journal of changes, serials per zone, NOTIFY for the changed zone only."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from prometheus_client import REGISTRY

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from sipzone.dns.ixfr import Journal
from sipzone.dns.records import IN, Records
from sipzone.dns.xfr import transfer
from sipzone.model.snapshot import Snapshot
from tests.conftest import free_port
from tests.dns.conftest import RULES, SITE_A, SITE_B, LiveDns, Named, dig, snapshot, with_rules
from tests.dns.test_xfr import NESTED, Record, rrs
from tests.test_runtime import Secondary

ALLOW = DnsConfig(allow_transfer=("127.0.0.0/8",))


def ixfr_query(zone: str, serial: int) -> dns.message.Message:
    """An IXFR query from a secondary at ``serial`` (RFC 1995 §3: its SOA in authority)."""
    query = dns.message.make_query(zone, "IXFR")
    soa = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.SOA, f"ns. h. {serial} 3600 600 1209600 60"
    )
    query.authority.append(dns.rrset.from_rdata(zone + ".", 60, soa))
    return query


def zone_records(records: Records, zone: str, query: dns.message.Message) -> list[Record]:
    return rrs(list(transfer(records, query, "127.0.0.1", ALLOW.allow_transfer)))


def axfr(snap: Snapshot, zone: str, config: DnsConfig = ALLOW) -> set[Record]:
    """The zone as a set of records (the closing SOA is the opening one)."""
    return set(zone_records(Records(snap, config), zone, dns.message.make_query(zone, "AXFR")))


def ixfr(journal: Journal, zone: str, serial: int) -> list[Record]:
    query = ixfr_query(zone, serial)
    return rrs(list(transfer(journal.records, query, "127.0.0.1", ALLOW.allow_transfer, journal)))


def serial_of(record: Record) -> int:
    return int(record[2].split()[2])


def apply(zone: set[Record], response: Sequence[Record]) -> tuple[set[Record], int]:
    """A secondary's zone after an IXFR response (RFC 1995 §4), and how many steps it held
    (0: the response was the whole zone)."""
    assert response[0][1] == "SOA" and response[-1] == response[0]
    if response[1][1] != "SOA":
        return set(response), 0
    out = set(zone)
    steps = 0
    soa_old = next(r for r in out if r[1] == "SOA")
    i = 1
    while i < len(response) - 1:
        assert response[i] == soa_old, (response[i], soa_old)  # a step starts at our version
        out.discard(soa_old)
        i += 1
        while response[i][1] != "SOA":
            assert response[i] in out, response[i]
            out.remove(response[i])
            i += 1
        soa_new = response[i]
        out.add(soa_new)
        i += 1
        while response[i][1] != "SOA":
            assert response[i] not in out, response[i]
            out.add(response[i])
            i += 1
        soa_old = soa_new
        steps += 1
    return out, steps


CHANGES: list[tuple[list[str], list[str]]] = [
    (["new1.example.com"], []),
    (["*.fresh.example.com", "new2.example.com"], []),
    (["fresh.example.com"], []),  # an exact rule on a wildcard's base: same service names
    ([], ["*.fresh.example.com"]),
    (["site-b.example.com"], ["site-a.example.com"]),  # site hosts: records of their own too
    (["y.sub.example.com", "*.deep.sub.example.com"], []),  # the nested zone's
    ([], ["voip.example.com", "teams.example.com"]),  # an exact base of *.teams goes
    (["voip.example.org"], []),  # in no zone of ours: both serials move, no record
    ([], ["example.com"]),  # the apex as a SIP domain goes
    (["teams.example.com"], ["*.teams.example.com"]),
]


def follow(
    journal: Journal, snaps: list[Snapshot], changes: Iterable[tuple[list[str], list[str]]]
) -> None:
    """Apply ``changes`` (added, removed) one revision each, as the server hands them on."""
    for added, removed in changes:
        snaps.append(with_rules(snaps[-1], added=added, removed=removed))
        journal.follow(snaps[-1])


def test_ixfr_from_every_serial_held_gives_the_zone_of_today() -> None:
    snaps = [NESTED]
    journal = Journal(NESTED, ALLOW)
    follow(journal, snaps, CHANGES)
    for zone in NESTED.zones:
        now = axfr(snaps[-1], zone)
        assert now == axfr(journal.records.snapshot, zone)
        for i, old in enumerate(snaps[:-1]):
            got, steps = apply(axfr(old, zone), ixfr(journal, zone, old.revision))
            assert steps == len(snaps) - 1 - i  # incremental, one step per revision since
            assert got == now, (zone, old.revision, got ^ now)
    # A step carries what changed only: adding new1 deleted nothing and added its 11 records
    # (2 A, 1 AAAA, 3 NAPTR, 5 SRV under its three service names), the SOA aside.
    first = ixfr(journal, "example.com", NESTED.revision)
    second_soa = next(i for i, r in enumerate(first[2:], 2) if r[1] == "SOA")
    assert second_soa == 2
    assert {r[0] for r in first[3:14]} == {
        f"{p}new1.example.com." for p in ("", "_sips._tcp.", "_sip._tcp.", "_sip._udp.")
    }
    assert first[14][1] == "SOA"
    # Up to date: the SOA alone.
    assert [r[1] for r in ixfr(journal, "example.com", snaps[-1].revision)] == ["SOA"]


def answered(answer: str) -> float:
    """IXFR queries answered so (sipzone_dns_ixfr_total) in this process so far."""
    return REGISTRY.get_sample_value("sipzone_dns_ixfr_total", {"answer": answer}) or 0.0


def test_a_serial_the_journal_does_not_hold_gets_the_whole_zone() -> None:
    snaps = [NESTED]
    journal = Journal(NESTED, replace(ALLOW, ixfr_history=60))
    follow(journal, snaps, [(["a1.example.com"], []), (["a2.example.com"], [])])
    now = axfr(snaps[-1], "example.com")
    before = {a: answered(a) for a in ("zone", "incremental", "current")}
    assert apply(set(), ixfr(journal, "example.com", 3))[0] == now  # before our first
    assert apply(axfr(snaps[0], "example.com"), ixfr(journal, "example.com", 9))[1] == 2
    assert len(ixfr(journal, "example.com", 11)) == 1
    assert {a: answered(a) - n for a, n in before.items()} == {
        "zone": 1,
        "incremental": 1,
        "current": 1,
    }
    # Steps beyond the history (60 records per zone, about 4 steps of 13) are forgotten.
    follow(journal, snaps, [([f"b{i}.example.com"], []) for i in range(6)])
    assert apply(set(), ixfr(journal, "example.com", 9))[1] == 0  # too old now: AXFR
    got, steps = apply(axfr(snaps[-3], "example.com"), ixfr(journal, "example.com", 15))
    assert (got, steps) == (axfr(snaps[-1], "example.com"), 2)
    # A bulk change bigger than the history restarts it without rendering the names.
    follow(journal, snaps, [([f"c{i}.example.com" for i in range(40)], [])])
    assert apply(set(), ixfr(journal, "example.com", 17))[1] == 0


def test_a_site_change_restarts_the_history_and_health_changes_nothing() -> None:
    snaps = [NESTED]
    journal = Journal(NESTED, ALLOW)
    follow(journal, snaps, [(["a1.example.com"], [])])
    before = axfr(snaps[-1], "example.com")
    # A probe's verdict: same revision, site-b down.  Transfers publish sites as configured.
    sick = replace(snaps[-1], sites=(SITE_A, replace(SITE_B, healthy=False)), delta=None)
    journal.follow(sick)
    assert axfr(journal.records.snapshot, "example.com") == before
    assert apply(axfr(NESTED, "example.com"), ixfr(journal, "example.com", 9))[1] == 1
    # A drain is configuration (a revision): the zone changes whole, so does the history.
    drained = replace(sick, revision=11, sites=(SITE_A, replace(SITE_B, drained=True)))
    journal.follow(drained)
    now = axfr(journal.records.snapshot, "example.com")
    site_b = ("voip.example.com.", "A", "198.51.100.10")
    assert site_b in before and site_b not in now
    assert apply(set(), ixfr(journal, "example.com", 10)) == (now, 0)


def test_each_zone_has_its_own_serial_in_answers_and_transfers() -> None:
    base = replace(NESTED, zone_revisions={"example.com": 9, "sub.example.com": 4})
    authority = Authority(base, ALLOW)

    def soa_serial(name: str, rdtype: str = "SOA") -> int:
        query = dns.message.make_query(name, rdtype)
        reply = dns.message.from_wire(authority.respond(query.to_wire(), "203.0.113.1"))
        return int((reply.answer or reply.authority)[0][0].serial)

    assert [soa_serial("example.com"), soa_serial("sub.example.com")] == [9, 4]
    assert soa_serial("x.sub.example.com", "MX") == 4  # NODATA carries the zone's SOA
    # A rule in example.com moves example.com's serial only (the store sets zone_revisions).
    changed = with_rules(base, added=["fresh.example.com"])
    authority.update(replace(changed, zone_revisions={"example.com": 10, "sub.example.com": 4}))
    assert [soa_serial("example.com"), soa_serial("sub.example.com")] == [10, 4]
    assert soa_serial("x.sub.example.com", "MX") == 4
    assert soa_serial("voip.example.com", "MX") == 10
    sub = axfr(authority.snapshot, "sub.example.com")
    assert [serial_of(r) for r in sub if r[1] == "SOA"] == [4]


def test_notify_goes_for_the_changed_zone_only(live_dns: type[LiveDns]) -> None:
    secondary = Secondary()
    try:
        first = snapshot(revision=5, zones=("example.com", "example.org"))
        first = replace(first, zone_revisions={"example.com": 5, "example.org": 3})
        live = live_dns(first, replace(ALLOW, notify=(secondary.address,)))
        one = with_rules(first, added=["fresh.example.com"])
        live.publish(replace(one, zone_revisions={"example.com": 6, "example.org": 3}))
        # A NOTIFY for example.org would carry its serial, 3.
        assert secondary.serials(until=6) == [6]
        two = with_rules(one, added=["fresh.example.org"])
        live.publish(replace(two, zone_revisions={"example.com": 6, "example.org": 7}))
        assert secondary.serials(until=7) == [7]
        assert dig(live.port, "example.org", "SOA").rdata("SOA")[0].split()[2] == "7"
    finally:
        secondary.sock.close()


def transfers(bind: Named) -> list[tuple[int, int]]:
    """(messages, records) of every transfer BIND completed, from its log."""
    found = re.findall(r"Transfer completed: (\d+) messages, (\d+) records", bind.log.read_text())
    return [(int(m), int(r)) for m, r in found]


def test_bind_follows_a_10000_domain_zone_by_ixfr(
    live_dns: type[LiveDns], named: type[Named], tmp_path: Path
) -> None:
    many = [(f"d{i}.example.com", "provider") for i in range(10_000)]
    first = snapshot(revision=50, rules=[*RULES, *many])
    bind_port = free_port()
    live = live_dns(first, replace(ALLOW, notify=(f"127.0.0.1:{bind_port}",)))
    bind = named(bind_port, live.port)
    bind.wait_serial(50, within=60)
    [(_, whole)] = transfers(bind)
    assert whole > 110_000  # the zone: 11 records a domain
    # A domain added: NOTIFY, and BIND asks for and gets the change alone (its 11 records,
    # the SOA of both versions, the current SOA around them) and writes it to its journal.
    incremental = answered("incremental")
    one = with_rules(first, added=["fresh.example.com"])
    live.publish(one)
    bind.wait_serial(51)
    assert transfers(bind)[1:] == [(1, 15)]
    assert answered("incremental") == incremental + 1  # an IXFR, answered with the change
    assert sorted(dig(bind.port, "fresh.example.com", "A").rdata("A")) == [
        "192.0.2.10",
        "198.51.100.10",
    ]
    assert (tmp_path / "example.com.db.jnl").exists()
    # A domain removed: gone from BIND, by IXFR again.
    assert dig(bind.port, "_sip._udp.d77.example.com", "SRV").status == "NOERROR"
    live.publish(with_rules(one, removed=["d77.example.com"]))
    bind.wait_serial(52)
    assert transfers(bind)[2:] == [(1, 15)]
    assert dig(bind.port, "d77.example.com", "A").status == "NXDOMAIN"
    assert dig(bind.port, "_sip._udp.d77.example.com", "SRV").status == "NXDOMAIN"
    # What a secondary at serial 50 gets now: both changes, nothing else.
    got = dig(live.port, "example.com", "IXFR=50").text_records()
    owners = {row[0] for row in got if row[3] != "SOA"}
    assert owners == {
        p + d for d in ("fresh.example.com.", "d77.example.com.")
        for p in ("", "_sips._tcp.", "_sip._tcp.", "_sip._udp.")
    }  # fmt: skip
    assert len(got) == 1 + 2 * (2 + 11) + 1


def test_ixfr_over_udp_carries_the_question_and_what_fits(live_dns: type[LiveDns]) -> None:
    first = snapshot(revision=20)
    live = live_dns(first, ALLOW)
    many = with_rules(first, added=[f"bulk{i}.example.com" for i in range(30)])
    live.publish(many)
    live.publish(with_rules(many, added=["fresh.example.com"]))
    question = dns.rrset.RRset(dns.name.from_text("example.com."), IN, dns.rdatatype.IXFR)

    def ask(serial: int, payload: int | None = None, port: int = live.port) -> dns.message.Message:
        query = ixfr_query("example.com", serial)
        if payload is not None:
            query.use_edns(0, payload=payload)
        return dns.query.udp(query, "127.0.0.1", port=port, timeout=5, one_rr_per_rrset=True)

    # Up to date, or a serial we hold no changes from: the SOA alone, with the question.
    for serial in (22, 5):
        reply = ask(serial)
        assert reply.question == [question]
        assert [(r.rdtype, r[0].serial) for r in reply.answer] == [(dns.rdatatype.SOA, 22)]
    # From 20 the changes do not fit a datagram (31 domains): the SOA alone says "ask over
    # TCP"; from 21 the one domain fits in what the client takes (and we offer, 1232 octets).
    assert [r[0].serial for r in ask(20, 4096).answer] == [22]
    small = ask(21, 4096)
    assert small.question == [question] and small.edns == 0
    assert sum(len(r) for r in small.answer) == 1 + 2 + 11 + 1
    tcp = dig(live.port, "example.com", "IXFR=20").text_records()
    assert len(tcp) == 1 + 2 + 30 * 11 + 2 + 11 + 1
    # Not allowed to transfer: refused, question included.
    closed = live_dns(first, DnsConfig(allow_transfer=("192.0.2.0/24",)))
    refused = ask(20, port=closed.port)
    assert refused.rcode() == dns.rcode.REFUSED and refused.question == [question]
