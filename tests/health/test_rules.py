"""Health as values and records: thresholds, the majority rule, settings, what the store keeps,
and what the DNS answers while a site is down or drained."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from sipzone.health.monitor import SiteTracker, targets
from sipzone.model.errors import NotFound, NotPermitted, OutOfRange
from sipzone.model.health import DEFAULT_CHECK, HealthCheck, majority
from sipzone.store.repository import NodeBeat, SiteView, Store
from tests.dns.conftest import SITE_A, SITE_B, snapshot

CHECK = HealthCheck(interval=1, timeout=0.5, failures=3, successes=2)


def test_a_site_goes_down_after_its_failures_and_up_after_its_successes() -> None:
    tracker = SiteTracker(replace(SITE_A, check=CHECK))
    assert tracker.observe(None) and tracker.up  # the first round decides alone
    assert not tracker.observe("lost") and not tracker.observe("lost") and tracker.up
    assert not tracker.observe(None)  # a good round starts the count again
    assert [tracker.observe("lost") for _ in range(3)] == [False, False, True]
    assert tracker.up is False and tracker.detail == "lost"
    assert [tracker.observe(None) for _ in range(2)] == [False, True]
    assert tracker.up and tracker.detail is None
    first_down = SiteTracker(SITE_A)
    assert first_down.observe("refused") and first_down.up is False


def test_down_needs_a_strict_majority_of_the_nodes_that_see_the_site() -> None:
    assert majority({}).up  # nobody probes it: the operator's word stands
    assert not majority({"a": False}).up  # one node alone decides
    assert majority({"a": False, "b": True}).up  # one of two is no majority
    verdict = majority({"a": False, "b": False, "c": True})
    assert not verdict.up and verdict.describe() == "2 of 3 node(s) see it down"


@pytest.mark.parametrize(
    "values",
    [
        {"interval": 0},
        {"interval": 5000},
        {"timeout": 10},  # longer than the interval
        {"timeout": 0.001},
        {"failures": 0},
        {"successes": 101},
    ],
)
def test_out_of_range_settings_are_refused_naming_the_field(values: dict[str, float]) -> None:
    with pytest.raises(OutOfRange, match="health-check"):
        HealthCheck.checked(**values)  # type: ignore[arg-type]


def test_a_short_interval_alone_shortens_the_timeout_to_it() -> None:
    assert HealthCheck.checked(interval=1) == HealthCheck(interval=1, timeout=1)
    assert HealthCheck.checked(interval=1, base=HealthCheck(timeout=0.5)).timeout == 0.5


def test_probes_go_to_every_offered_transport_and_vip() -> None:
    got = {str(t) for t in targets(SITE_A)}
    assert got == {"udp 192.0.2.10:5060", "tcp 192.0.2.10:5060", "udp [2001:db8::10]:5060",
                   "tcp [2001:db8::10]:5060"}  # fmt: skip
    assert {t.transport for t in targets(SITE_B)} == {"udp", "tcp", "tls"}


def test_settings_and_drain_are_changes_with_a_revision(store: Store) -> None:
    store.add_site("eu1", vips=["192.0.2.1"], region="eu", check=HealthCheck(interval=10))
    [site] = store.list_sites()
    assert site.check == replace(DEFAULT_CHECK, interval=10)
    before = store.revision()
    check, rev = store.set_site_check("eu1", failures=5)
    assert check == HealthCheck(interval=10, failures=5) and rev == before + 1
    with pytest.raises(OutOfRange):
        store.set_site_check("eu1", timeout=20)
    assert store.list_sites()[0].check == check and store.revision() == rev
    assert store.set_site_drained("eu1", True) == rev + 1
    assert store.list_sites()[0].drained
    store.set_site_drained("eu1", False)
    assert not store.list_sites()[0].drained
    with pytest.raises(NotFound):
        store.set_site_drained("nope", True)
    with pytest.raises(NotPermitted):
        store.acting("someone", "cli").set_site_drained("eu1", True)
    assert [c.op for c in store.changes_since(before)] == [
        "site.check", "site.drain", "site.undrain"
    ]  # fmt: skip


def test_views_and_heartbeats_bump_no_revision_and_age_out(store: Store) -> None:
    store.add_site("eu1", vips=["192.0.2.1"], region="eu")
    rev = store.revision()
    now = datetime.now(UTC)
    beat = NodeBeat("eu1", ("udp:127.0.0.1:5060",), rev, now)
    store.write_views("n1", [SiteView("eu1", False, now, "refused")], beat)
    store.write_views("n1", [SiteView("eu1", True, now)], beat)  # replaces, not adds
    store.write_views("n2", [SiteView("eu1", False, now, "x" * 400)], beat)
    assert store.revision() == rev
    views = store.site_views()
    assert [(v.node, v.site, v.up) for v in views] == [("n1", "eu1", True), ("n2", "eu1", False)]
    assert views[1].detail == "x" * 300 and views[0].seen_at is not None
    assert abs(views[0].changed_at - now) < timedelta(seconds=1)
    assert store.site_views(fresh_within=0.0) == []
    nodes = store.list_nodes()
    assert [(n.name, n.site, n.revision, n.store_revision) for n in nodes] == [
        ("n1", "eu1", rev, rev), ("n2", "eu1", rev, rev)
    ]  # fmt: skip
    assert nodes[0].addresses == ("udp:127.0.0.1:5060",)


def ask(auth: Authority, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.message.from_wire(auth.respond(query.to_wire(), "127.0.0.1") or b"")


def answer(auth: Authority, name: str, rdtype: str) -> tuple[set[str], int]:
    reply = ask(auth, name, rdtype)
    texts = {rd.to_text() for rrset in reply.answer for rd in rrset}
    return texts, min((rrset.ttl for rrset in reply.answer), default=-1)


def test_a_down_or_drained_site_leaves_the_answers_with_a_short_ttl() -> None:
    config = DnsConfig(ttl=300, health_ttl=30)
    auth = Authority(snapshot(), config)
    assert answer(auth, "voip.example.com", "A") == ({"192.0.2.10", "198.51.100.10"}, 300)
    for out in (replace(SITE_B, healthy=False), replace(SITE_B, drained=True)):
        auth.update(snapshot(revision=2, sites=(SITE_A, out)))
        assert answer(auth, "voip.example.com", "A") == ({"192.0.2.10"}, 30)
        assert answer(auth, "mail.example.com", "A") == ({"192.0.2.10"}, 30)
        srv, ttl = answer(auth, "_sip._udp.voip.example.com", "SRV")
        assert ttl == 30 and all("site-b" not in s for s in srv) and srv
        # the site's own name does not change with health
        assert answer(auth, "site-b.example.com", "A") == ({"198.51.100.10"}, 300)
    auth.update(snapshot(revision=3))
    assert answer(auth, "voip.example.com", "A")[1] == 300


def test_every_site_down_serves_them_all_but_never_a_drained_one() -> None:
    auth = Authority(snapshot(), DnsConfig(ttl=300, health_ttl=30))
    down_a, down_b = replace(SITE_A, healthy=False), replace(SITE_B, healthy=False)
    auth.update(snapshot(revision=2, sites=(down_a, down_b)))
    assert answer(auth, "voip.example.com", "A")[0] == {"192.0.2.10", "198.51.100.10"}
    auth.update(snapshot(revision=3, sites=(down_a, replace(down_b, drained=True))))
    assert answer(auth, "voip.example.com", "A") == ({"192.0.2.10"}, 30)


def test_a_heartbeat_never_creates_a_removed_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    store = Store(f"sqlite:///{path}")
    store.init()
    store.close()
    path.unlink()
    beat = NodeBeat(None, (), 1, datetime.now(UTC))
    with pytest.raises(FileNotFoundError):
        store.write_views("n1", [], beat)
    assert not path.exists()
