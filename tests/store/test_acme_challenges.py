"""DNS-01 values through the store: published by the DNS (several at one name together),
refused outside our zones, withdrawn after the order; and the renewal lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from sipzone.model.acme import (
    backoff,
    challenge_name,
    parse_acme_domains,
    parse_key_type,
    renewal_due,
)
from sipzone.model.errors import BadChallenge, BadKeyType, InvalidValue, NotFound, NotPermitted
from sipzone.store.repository import Store

V1 = "a" * 43
V2 = "B-_" * 14 + "c"


def txt(auth: Authority, name: str) -> tuple[int, list[str], int]:
    query = dns.message.make_query(name, "TXT")
    out = auth.respond(query.to_wire(), "127.0.0.1")
    assert out is not None
    reply = dns.message.from_wire(out)
    values = sorted(
        b"".join(rd.strings).decode()
        for rrset in reply.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rd in rrset
    )
    ttl = reply.answer[0].ttl if reply.answer else -1
    return reply.rcode(), values, ttl


def test_challenge_values_are_published_together_and_withdrawn(store: Store) -> None:
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    name = challenge_name("*.teams.example.com")
    assert name == challenge_name("teams.example.com") == "_acme-challenge.teams.example.com"
    store.publish_challenges("teams", [(name, V1), (name.upper(), V2)])
    auth = Authority(store.load_snapshot(), DnsConfig())
    rcode, values, ttl = txt(auth, name)
    assert rcode == dns.rcode.NOERROR
    assert values == sorted([V1, V2])
    assert 0 < ttl <= 60
    assert store.clear_challenges("teams") is not None
    assert store.clear_challenges("teams") is None  # nothing left: nothing written
    auth.update(store.advance(auth.snapshot))
    assert txt(auth, name)[:2] == (dns.rcode.NXDOMAIN, [])


def test_bad_challenges_change_nothing(store: Store) -> None:
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    before = store.revision()
    with pytest.raises(BadChallenge, match="none of sipzone's zones"):
        store.publish_challenges("x", [("_acme-challenge.example.org", V1)])
    with pytest.raises(BadChallenge, match="base64url"):
        store.publish_challenges("x", [("_acme-challenge.example.com", "a b")])
    with pytest.raises(BadChallenge, match="_acme-challenge"):
        store.publish_challenges("x", [("www.example.com", V1)])
    store.add_tenant("reseller")
    with pytest.raises(NotPermitted):
        store.acting("reseller", "test").publish_challenges(
            "x", [("_acme-challenge.example.com", V1)]
        )
    assert store.revision() == before + 1  # the tenant only
    assert store.load_snapshot().challenges == ()


def test_one_node_at_a_time_holds_the_lease(store: Store) -> None:
    assert store.take_lease("node-a", 30)
    assert not store.take_lease("node-b", 30)
    assert store.take_lease("node-a", 30)  # renewed by its holder
    store.release_lease("node-a")
    assert store.take_lease("node-b", 0.0)
    assert store.take_lease("node-a", 30)  # node-b's lease ran out at once


def test_order_values() -> None:
    assert parse_acme_domains(
        ["*.Teams.Example.com", "teams.example.com", "*.teams.example.com"]
    ) == (
        "*.teams.example.com",
        "teams.example.com",
    )
    with pytest.raises(InvalidValue):
        parse_acme_domains([])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert renewal_due(start, start + timedelta(days=90)) == start + timedelta(days=60)
    base = timedelta(seconds=10)
    assert [backoff(n, base).total_seconds() for n in (1, 2, 3)] == [10, 20, 40]
    assert backoff(40, base) == timedelta(hours=6)
    with pytest.raises(BadKeyType):
        parse_key_type("dsa")


def test_challenges_survive_a_rule_only_change(store: Store) -> None:
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    store.publish_challenges("teams", [("_acme-challenge.teams.example.com", V1)])
    snap = store.load_snapshot()
    store.add_domain("voip.example.com")
    later = store.advance(snap)
    assert later.delta is not None and later.challenges == snap.challenges


def test_zone_transfers_carry_the_challenge_values(store: Store) -> None:
    """Secondaries (AXFR after NOTIFY) get the values like any record of the zone."""
    from sipzone.dns.export import export_zone

    store.add_nameserver("ns1.example.org")
    store.add_zone("example.com")
    store.publish_challenges("teams", [("_acme-challenge.teams.example.com", V1)])
    store.publish_challenges("teams", [("_acme-challenge.teams.example.com", V2)])
    text = export_zone(store.load_snapshot(), "example.com")
    lines = [line for line in text.splitlines() if "_acme-challenge" in line]
    assert len(lines) == 2 and all("TXT" in line for line in lines), text
    assert {V1, V2} == {line.split('"')[1] for line in lines}


def test_a_certificate_added_by_hand_stops_renewing(store: Store, tmp_path: Path) -> None:
    import trustme

    from sipzone.model.acme import AcmeAccount, AcmePlan
    from tests.tlscerts import issue

    plan = AcmePlan("https://ca.test/dir", "ops@example.com", ("a.example.com",), "ec256")
    leaf = issue(trustme.CA(), tmp_path, "a.example.com")
    chain, key = leaf.chain.read_bytes(), leaf.key.read_bytes()
    with pytest.raises(NotFound, match="no ACME account"):
        store.add_certificate("a", chain, key, acme=plan)
    assert store.list_certificates() == []  # nothing half-stored
    store.save_acme_account(AcmeAccount(plan.directory, plan.email, "KEY", "https://ca.test/1"))
    store.add_certificate("a", chain, key, acme=plan)
    [state] = store.acme_certificates()
    assert (state.name, state.plan, state.failures) == ("a", plan, 0)
    store.record_renewal("a", "refused", datetime.now(UTC) + timedelta(minutes=5))
    store.record_renewal("a", "refused again", datetime.now(UTC) + timedelta(minutes=10))
    [state] = store.acme_certificates()
    assert (state.failures, state.last_error) == (2, "refused again")
    assert state.next_attempt is not None and state.next_attempt > datetime.now(UTC)
    assert "KEY" not in repr(store.acme_account(plan.directory, plan.email))
    store.add_certificate("a", chain, key)
    assert store.acme_certificates() == []
