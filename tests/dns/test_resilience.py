"""One bad row or one bug costs one record or one answer, never a zone or the server (issue 7,
item 4): asked with real `dig` over UDP and TCP."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from tests.dns.conftest import SITE_A, SITE_B, LiveDns, dig, ip, snapshot, with_rules

# `site add s2 --vip 'fe80::1%eth0'` used to be accepted: Python's ipaddress keeps the scope
# ID, which no DNS record can carry.  The store now refuses it; the DNS must survive a row that
# gets past any check (an older store, another writer), so these sites bypass the store.
SCOPED = replace(
    SITE_B,
    name="s2",
    vips=(ip("fe80::1%eth0"), ip("198.51.100.20")),
    ports={"udp": 5060, "tcp": 5060, "tls": 5061},
)
RAW_TEXT = replace(SITE_B, name="s3", vips=("fe80::2%lo", ip("198.51.100.30")), order=3)  # type: ignore[arg-type]


def test_a_scoped_vip_is_left_out_and_everything_else_answers(
    live_dns: type[LiveDns], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sipzone.dns")
    first = snapshot(sites=(SITE_A, SCOPED, RAW_TEXT))
    live = live_dns(first, DnsConfig(allow_transfer=("127.0.0.0/8",)))
    port = live.port
    # The zone still transfers, without the bad addresses.
    axfr = dig(port, "example.com", "AXFR").text_records()
    assert ["s2.example.com.", "300", "IN", "A", "198.51.100.20"] in axfr
    assert axfr[0][3] == axfr[-1][3] == "SOA" and "fe80" not in str(axfr)
    for transport in ("+notcp", "+tcp"):
        soa = dig(port, "example.com", "SOA", transport)
        assert soa.status == "NOERROR" and len(soa.rdata("SOA")) == 1
        ns = dig(port, "example.com", "NS", transport)
        assert sorted(ns.rdata("NS")) == [
            "s2.example.com.", "s3.example.com.", "site-a.example.com.",
        ]  # fmt: skip
        glue = {(r[0], r[4]) for r in ns.additional}
        assert ("s2.example.com.", "198.51.100.20") in glue
        assert ("site-a.example.com.", "2001:db8::10") in glue
        assert sorted(dig(port, "voip.example.com", "A", transport).rdata("A")) == [
            "192.0.2.10", "198.51.100.20", "198.51.100.30",
        ]  # fmt: skip
        assert dig(port, "voip.example.com", "AAAA", transport).rdata("AAAA") == ["2001:db8::10"]
        srv = dig(port, "_sip._udp.voip.example.com", "SRV", transport)
        assert len(srv.rdata("SRV")) == 3
        assert dig(port, "mail.example.com", "MX", transport).status == "NOERROR"
        # The bad site's own name: its good address, and NODATA where only the bad one was.
        assert dig(port, "s2.example.com", "A", transport).rdata("A") == ["198.51.100.20"]
        v6 = dig(port, "s2.example.com", "AAAA", transport)
        assert (v6.status, v6.answer, v6.authority[0][3]) == ("NOERROR", [], "SOA")
        assert dig(port, "nope.example.com", "A", transport).status == "NXDOMAIN"
        assert "fe80" not in srv.text + ns.text
    # Later revisions rebuild the records: the bad addresses are not logged again and again.
    live.publish(with_rules(first, added=["new.example.com"]))
    live.publish(replace(first, revision=5))
    assert dig(port, "new.example.com", "A").status == "NXDOMAIN"  # revision 5 lacks it
    lines = [r.getMessage() for r in caplog.records if "fe80" in r.getMessage()]
    assert len(lines) == 2, lines  # one per bad address
    assert all("left out" in line for line in lines)
    assert not [r for r in caplog.records if r.exc_info]


def test_a_zone_that_cannot_be_rendered_leaves_the_others_answering(
    live_dns: type[LiveDns],
) -> None:
    port = live_dns(snapshot(zones=("example.com", "bad zone.example"))).port
    assert dig(port, "example.com", "SOA").status == "NOERROR"
    assert sorted(dig(port, "voip.example.com", "A").rdata("A")) == [
        "192.0.2.10", "198.51.100.10",
    ]  # fmt: skip


def test_a_failure_answering_one_question_costs_that_answer_only(
    live_dns: type[LiveDns], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "sipzone.dns")
    real = Authority._node

    def broken_for_services(self: Authority, zone: str, roles: Any, view: int) -> Any:
        if any(role.kind == "service" for role in roles):
            raise RuntimeError("a bug in compiling SRV answers")
        return real(self, zone, roles, view)

    # Fault injection: our own code raising, as a bug would.
    monkeypatch.setattr(Authority, "_node", broken_for_services)
    port = live_dns().port
    for transport in ("+notcp", "+tcp", "+notcp", "+tcp"):
        failed = dig(port, "_sip._udp.voip.example.com", "SRV", transport)
        assert failed.status == "SERVFAIL"
        assert dig(port, "_sips._tcp.cust1.teams.example.com", "SRV", transport).status == (
            "SERVFAIL"
        )
        assert dig(port, "voip.example.com", "A", transport).status == "NOERROR"
        assert dig(port, "example.com", "NS", transport).rdata("NS")
        assert dig(port, "example.com", "SOA", transport).status == "NOERROR"
    bugs = [r for r in caplog.records if "resolving a question failed" in r.getMessage()]
    assert len(bugs) == 1  # rate-limited: one line per place and minute, with the traceback
    assert "RuntimeError: a bug in compiling SRV answers" in bugs[0].getMessage()


def test_authority_with_bad_rows_answers_byte_queries_without_raising() -> None:
    auth = Authority(snapshot(sites=(SITE_A, SCOPED, RAW_TEXT)), DnsConfig())
    import dns.message

    for name in (
        "example.com",
        "voip.example.com",
        "s2.example.com",
        "_sips._tcp.voip.example.com",
    ):
        for rdtype in ("A", "AAAA", "NS", "SRV", "NAPTR", "SOA", "ANY"):
            query = dns.message.make_query(name, rdtype).to_wire()
            reply = dns.message.from_wire(auth.respond(query, "127.0.0.1") or b"")
            assert reply.rcode() == 0, (name, rdtype)
