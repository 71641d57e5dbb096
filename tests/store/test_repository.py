"""The repository on SQLite and on the running PostgreSQL (a throwaway database per test)."""

import ipaddress
import threading

import pytest

from sipzone.model.errors import (
    Conflict,
    ImportRefused,
    InvalidName,
    InvalidValue,
    NotFound,
    NotPermitted,
)
from sipzone.model.names import parse_rule
from sipzone.store.repository import Store, StoreNotInitialised


def test_every_write_bumps_revision_and_logs(store: Store) -> None:
    r0 = store.revision()
    store.add_tenant("acme", brand_name="ACME")
    store.add_domain("voip.acme.example", "acme")
    store.add_domain("*.teams.example.com", "acme")
    assert store.revision() == r0 + 3
    changes = store.changes_since(r0)
    assert [(c.op, c.subject) for c in changes] == [
        ("tenant.add", "acme"),
        ("domain.add", "voip.acme.example"),
        ("domain.add", "*.teams.example.com"),
    ]
    assert changes[1].detail == {"owner": "acme"}
    assert all(c.actor == "provider (cli)" for c in changes)
    assert [c.revision for c in changes] == [r0 + 1, r0 + 2, r0 + 3]


def test_failed_writes_change_nothing(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other")
    store.add_domain("*.teams.example.com", "acme")
    before = store.revision()
    with pytest.raises(Conflict):
        store.add_domain("*.teams.example.com", "acme")
    with pytest.raises(Conflict):
        store.add_tenant("acme")
    with pytest.raises(NotPermitted):
        store.add_domain("cust.teams.example.com", "other")
    with pytest.raises(InvalidName):
        store.add_domain("bad_name.example", "acme")
    with pytest.raises(NotFound):
        store.remove_domain("nope.example.com")
    with pytest.raises(InvalidValue):
        store.add_site("a", vips=["300.1.1.1"], region="eu")
    assert store.revision() == before
    assert [d.name for d in store.list_domains()] == ["*.teams.example.com"]


def test_acting_tenant_is_confined_to_its_subtree(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other")
    acme = Store(store.url, actor="acme")
    acme.add_tenant("cust1", "acme")
    acme.add_domain("voip.acme.example", "cust1")
    with pytest.raises(NotPermitted):
        acme.add_domain("voip.other.example", "other")
    store.add_domain("voip.other.example", "other")
    with pytest.raises(NotPermitted):
        acme.remove_domain("voip.other.example")
    acme.remove_domain("voip.acme.example")
    acme.close()


def test_snapshot_reflects_the_store(store: Store) -> None:
    store.add_tenant("acme", upstream="sip:core.acme.example:5060")
    store.add_tenant("cust1", "acme")
    store.add_domain("*.teams.example.com", "cust1")
    store.add_site("a", vips=["192.0.2.10", "2001:db8::10"], region="eu", networks=["10.0.0.0/8"])
    store.add_site("b", vips=["198.51.100.10"], region="us", weight=50)
    store.add_nameserver("ns1.example.org")
    store.add_zone("Example.com.")
    store.set_email_domain("mail.example.com")
    store.set_email_domain("vm.example.com", mx="mx.example.com")
    snap = store.load_snapshot()
    assert snap.revision == store.revision()
    match = snap.check("Cust42.TEAMS.example.com.")
    assert match is not None and match.owner.name == "cust1"
    assert match.owner.upstream == "sip:core.acme.example:5060"
    assert [s.name for s in snap.sites] == ["a", "b"]
    assert snap.sites[0].vips == (
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::10"),
    )
    assert snap.sites[0].networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert snap.sites[1].weight == 50
    assert snap.zones == ("example.com",)
    assert snap.email_domain == "vm.example.com"
    assert snap.settings["email_mx"] == "mx.example.com"
    assert snap.zone_of("x.teams.example.com") == "example.com"


def test_advance_applies_domain_changes_incrementally(store: Store) -> None:
    store.add_tenant("acme")
    store.add_domain("a.example.com", "acme")
    snap = store.load_snapshot()
    store.add_domain("*.teams.example.com", "acme")
    store.remove_domain("a.example.com")
    new = store.advance(snap)
    assert new.revision == store.revision()
    assert new.delta is not None
    assert new.delta.added == ("*.teams.example.com",)
    assert new.delta.removed == ("a.example.com",)
    assert new.check("x.teams.example.com") is not None
    assert new.check("a.example.com") is None
    assert snap.check("a.example.com") is not None  # the old snapshot is untouched
    store.add_site("a", vips=["192.0.2.1"], region="eu")
    full = store.advance(new)
    assert full.delta is None and len(full.sites) == 1


def test_import_is_batched_idempotent_and_all_or_nothing(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other")
    entries = [(i, parse_rule(f"c{i}.example.com"), None) for i in range(1, 2501)]
    entries.append((2501, parse_rule("*.teams.example.com"), "acme"))
    before = store.revision()
    report = store.import_domains(entries, "acme", batch=1000)
    assert (report.read, report.added, report.unchanged) == (2501, 2501, 0)
    assert store.revision() == before + 1  # one transaction, one revision, three statements
    assert [(c.op, c.detail) for c in store.changes_since(before)] == [
        ("domain.import", {"lines": 2501, "added": 2501, "last": "*.teams.example.com"})
    ]
    again = store.import_domains(entries, "acme", batch=1000)
    assert (again.added, again.unchanged) == (0, 2501)
    assert store.revision() == before + 1  # nothing added, no revision
    bad = [
        (1, parse_rule("new1.example.com"), "acme"),
        (2, parse_rule("x.teams.example.com"), "other"),
    ]
    rev = store.revision()
    with pytest.raises(ImportRefused, match="line 2"):
        store.import_domains(bad)
    assert store.revision() == rev
    assert store.load_snapshot().check("new1.example.com") is None


def test_concurrent_adds_of_one_name_give_one_winner(store: Store) -> None:
    store.add_tenant("acme")
    results: list[str] = []

    def add() -> None:
        s = Store(store.url)
        try:
            s.add_domain("race.example.com", "acme")
            results.append("ok")
        except Conflict:
            results.append("conflict")
        except Exception as exc:  # SQLite unique violation surfaces as IntegrityError
            results.append(type(exc).__name__)
        finally:
            s.close()

    threads = [threading.Thread(target=add) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1
    assert results.count("conflict") == 5
    assert len(store.list_domains()) == 1


def test_uninitialised_store_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreNotInitialised, match="sipzone init"):
        s.add_tenant("x")
    s.close()


def test_init_is_repeatable(store: Store) -> None:
    store.add_tenant("acme")
    rev = store.revision()
    assert store.init() == rev
    assert "acme" in store.tenants()


def test_check_reads_only_candidate_rules_and_agrees_with_the_snapshot(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("cust1", "acme")
    for rule, owner in [
        ("*.teams.example.com", "acme"),
        ("*.eu.teams.example.com", "cust1"),
        ("special.eu.teams.example.com", "cust1"),
        ("voip.example.com", "acme"),
    ]:
        store.add_domain(rule, owner)
    snap = store.load_snapshot()
    for name in [
        "x.teams.example.com",
        "a.b.eu.teams.example.com",
        "special.eu.teams.example.com",
        "eu.teams.example.com",
        "teams.example.com",
        "voip.example.com",
        "sub.voip.example.com",
        "example.com",
    ]:
        match, revision = store.check(name)
        assert revision == snap.revision
        assert match == snap.matcher.match(name), name
