"""A matcher changed rule by rule (layered over a shared base, folded past its limit) answers as
a fresh build would, and every older matcher keeps answering as it did."""

from __future__ import annotations

import gc
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sipzone.model.matcher import Matcher
from sipzone.model.snapshot import Snapshot
from sipzone.model.tenancy import PROVIDER, TenancyTree, Tenant

LABELS = st.sampled_from(["a", "b", "teams", "eu", "x"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(lambda ls: ".".join([*ls, "example"]))
RULES = st.tuples(st.booleans(), NAMES).map(lambda t: ("*." if t[0] else "") + t[1])
OWNERS = st.sampled_from(["o1", "o2", "o3"])
# One change: rules removed, then rules added (what Store.advance hands over).
CHANGES = st.tuples(st.lists(RULES, max_size=4), st.lists(st.tuples(RULES, OWNERS), max_size=4))
QUERIES = [
    ".".join([*labels, "example"])
    for labels in [
        [a, *rest]
        for a in ["a", "b", "teams", "eu", "x"]
        for rest in [[], ["a"], ["teams"], ["eu", "teams"], ["x", "b", "a"]]
    ]
] + ["example", "other.org"]


def answers(m: Matcher[str]) -> list[object]:
    """Everything a reader can ask a matcher, for every query name and every rule."""
    out: list[object] = [len(m), sorted(m.rules()), sorted(m.exact_names())]
    out.append(sorted(m.wildcard_bases()))
    for name in QUERIES:
        out += [m.owner(name), m.match(name), m.exact_owner(name), m.wildcard_owner(name)]
        out += [name in m, "*." + name in m]
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(RULES, OWNERS, max_size=12),
    st.lists(CHANGES, min_size=1, max_size=12),
    st.integers(0, 8),
)
def test_changes_equal_a_fresh_build_and_leave_older_matchers_alone(
    start: dict[str, str], changes: list[tuple[list[str], list[tuple[str, str]]]], limit: int
) -> None:
    rules = dict(start)
    m = Matcher.from_rules(rules.items())
    history = [(m, answers(m))]
    for removed, added in changes:
        m = m.with_changes(added=added, removed=removed, overlay_limit=limit)
        for text in removed:
            rules.pop(text, None)
        rules.update(added)
        assert answers(m) == answers(Matcher.from_rules(rules.items()))
        history.append((m, answers(m)))
    for old, seen in history:
        assert answers(old) == seen


TREE = TenancyTree([Tenant("resa", PROVIDER), Tenant("resb", PROVIDER)])


@settings(max_examples=100, deadline=None)
@given(st.lists(CHANGES, min_size=1, max_size=20))
def test_snapshot_advanced_rule_by_rule_checks_as_one_built_from_scratch(
    changes: list[tuple[list[str], list[tuple[str, str]]]],
) -> None:
    owners = {"o1": "resa", "o2": "resb", "o3": PROVIDER}
    views = TREE.views
    rules: dict[str, str] = {}
    snap = Snapshot.build(1, TREE, [])
    for removed, added in changes:
        matcher = snap.matcher.with_changes(
            added=[(text, views[owners[o]]) for text, o in added], removed=removed
        )
        snap = replace(snap, revision=snap.revision + 1, matcher=matcher)
        for text in removed:
            rules.pop(text, None)
        rules.update((text, owners[o]) for text, o in added)
        fresh = Snapshot.build(snap.revision, TREE, list(rules.items()))
        for name in QUERIES:
            assert snap.check(name) == fresh.check(name), name
        assert len(snap.matcher) == len(fresh.matcher)


def reachable_matchers(m: Matcher[str]) -> int:
    """Matchers reachable from ``m``'s own references (its dicts, tuples and counters)."""
    seen: set[int] = set()
    todo: list[object] = list(gc.get_referents(m))
    found = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, str | int | type):
            continue
        seen.add(id(obj))
        if isinstance(obj, Matcher):
            found += 1
            continue
        todo += gc.get_referents(obj)
    return found


def test_many_changes_keep_every_held_matcher_intact_and_pin_no_predecessor() -> None:
    """5,000 one-rule changes (through two folds at a limit of 2,048): each held matcher still
    answers as when it was made, and none holds on to another matcher."""
    base = [(f"c{i}.example.com", "o1") for i in range(3000)]
    base += [(f"*.t{i}.example.net", "o2") for i in range(300)]
    m = Matcher.from_rules(base)
    held: list[tuple[int, Matcher[str]]] = [(0, m)]
    for i in range(1, 5001):
        if i % 3 == 0:  # remove an exact rule, then a wildcard
            m = m.with_changes(removed=[f"c{i}.example.com", f"*.t{i % 300}.example.net"])
        elif i % 3 == 1:  # a new exact rule under a wildcard, a wildcard back
            m = m.with_changes(
                added=[(f"x{i}.t{i % 300}.example.net", "o3"), (f"*.t{i % 300}.example.net", "o1")]
            )
        else:  # an owner change
            m = m.with_changes(added=[(f"c{i}.example.com", "o3")])
        if i % 250 == 0:
            held.append((i, m))
    assert reachable_matchers(m) == 0
    for i, old in held:
        assert reachable_matchers(old) == 0
        # What matcher i was made to answer, rebuilt from the same steps.
        rules = dict(base)
        for j in range(1, i + 1):
            if j % 3 == 0:
                rules.pop(f"c{j}.example.com", None)
                rules.pop(f"*.t{j % 300}.example.net", None)
            elif j % 3 == 1:
                rules[f"x{j}.t{j % 300}.example.net"] = "o3"
                rules[f"*.t{j % 300}.example.net"] = "o1"
            else:
                rules[f"c{j}.example.com"] = "o3"
        fresh = Matcher.from_rules(rules.items())
        assert len(old) == len(fresh)
        assert sorted(old.rules()) == sorted(fresh.rules())
        for name in [f"c{j}.example.com" for j in range(0, 5001, 7)] + [
            f"x{j}.t{j % 300}.example.net" for j in range(1, 5001, 9)
        ]:
            assert old.match(name) == fresh.match(name), (i, name)
            assert old.owner(name) == fresh.owner(name), (i, name)


def test_a_wildcard_added_by_a_change_still_yields_to_exact_rules_below_it() -> None:
    """A change that adds ``*.b`` does not count the exact rules under ``b`` (a scan): the
    exact rule must still win, before and after a fold."""
    m = Matcher.from_rules([("x.b.example", "exact")])
    m = m.with_changes(added=[("*.b.example", "wild")])
    for folded in (m, m.with_changes(added=[("y.example", "o")], overlay_limit=0)):
        assert folded.owner("x.b.example") == "exact"
        assert folded.owner("z.b.example") == "wild"
        match = folded.match("x.b.example")
        assert match is not None and match.rule == "x.b.example"
