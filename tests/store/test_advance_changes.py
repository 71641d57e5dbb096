"""Store.advance rule by rule, as a serving worker follows the store: each advanced snapshot
checks names as a snapshot loaded whole at its revision, and a held snapshot never changes."""

from __future__ import annotations

from sipzone.model.snapshot import Snapshot
from sipzone.store.repository import Store

NAMES = [
    *(f"c{i}.example.com" for i in range(12)),
    *(f"x.t{i}.example.net" for i in range(6)),
    *(f"c{i}.t{i}.example.net" for i in range(6)),
    "t1.example.net",
    "nobody.example.org",
]


def answers(snap: Snapshot) -> list[object]:
    return [len(snap.matcher), *(snap.check(name) for name in NAMES)]


def test_advancing_change_by_change_agrees_with_a_whole_load(store: Store) -> None:
    store.add_tenant("acme")
    store.add_tenant("other", "acme")
    for i in range(0, 12, 2):
        store.add_domain(f"c{i}.example.com", "acme")
    snap = store.load_snapshot()
    held = [(snap, answers(snap))]
    steps = 0
    for i in range(12):
        if i % 2:
            store.add_domain(f"c{i}.example.com", "other")
        else:
            store.remove_domain(f"c{i}.example.com")
        if i < 6:
            store.add_domain(f"*.t{i}.example.net", "acme")
            store.add_domain(f"c{i}.t{i}.example.net", "other")
        elif i % 3 == 0:
            store.remove_domain(f"*.t{i - 6}.example.net")
        snap = store.advance(snap)
        steps += 1
        assert snap.delta is not None  # along the change log, not reloaded
        assert answers(snap) == answers(store.load_snapshot()), i
        held.append((snap, answers(snap)))
    assert steps == 12
    for old, seen in held:
        assert answers(old) == seen
