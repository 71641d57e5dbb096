"""Each zone's serial moves only when what the zone publishes changes, and a worker that
follows the change log agrees with one that loads the store whole."""

from __future__ import annotations

from sipzone.model.names import parse_rule
from sipzone.store.repository import Store


def test_a_change_moves_its_own_zone_serial_only(store: Store) -> None:
    store.add_zone("example.com")
    _, org = store.add_zone("example.org")
    store.add_zone("sub.example.com")
    snap = store.load_snapshot()
    assert dict(snap.zone_revisions) == dict.fromkeys(snap.zones, org + 1)  # the last zone.add
    rev = store.add_domain("a.example.com")[1]
    store.add_domain("*.b.sub.example.com")
    store.add_domain("voip.example.net")  # no zone of ours: no serial moves
    snap = store.advance(snap)
    expected = {"example.com": rev, "example.org": org + 1, "sub.example.com": rev + 1}
    assert dict(snap.zone_revisions) == expected
    assert dict(store.load_snapshot().zone_revisions) == expected
    assert snap.revision == rev + 2
    # Health and tenants publish nothing in a zone; a site changes every zone.
    store.add_tenant("acme")
    site = store.add_site("eu1", vips=["192.0.2.1"], region="eu")
    store.set_site_health("eu1", False)
    assert dict(store.load_snapshot().zone_revisions) == dict.fromkeys(expected, site)
    # An import moves the zones it added to.
    entries = [(1, parse_rule("x.example.org"), None), (2, parse_rule("y.example.org"), None)]
    store.import_domains(entries)
    revisions = store.load_snapshot().zone_revisions
    assert (revisions["example.org"], revisions["example.com"]) == (store.revision(), site)
    # Removing a rule moves its zone as adding did.
    snap = store.load_snapshot()
    removed = store.remove_domain("*.b.sub.example.com")[1]
    assert dict(store.advance(snap).zone_revisions) == {**revisions, "sub.example.com": removed}
