from hypothesis import given, settings
from hypothesis import strategies as st

from sipzone.model.matcher import Matcher


def build(*rules: tuple[str, str]) -> Matcher[str]:
    return Matcher.from_rules(rules)


def test_exact_beats_wildcard_and_longer_base_wins() -> None:
    m = build(
        ("*.teams.example.com", "teams"),
        ("*.eu.teams.example.com", "eu"),
        ("special.eu.teams.example.com", "special"),
        ("voip.example.com", "voip"),
    )
    cases = {
        "cust42.teams.example.com": ("*.teams.example.com", "teams"),
        "a.b.c.teams.example.com": ("*.teams.example.com", "teams"),
        "x.eu.teams.example.com": ("*.eu.teams.example.com", "eu"),
        "eu.teams.example.com": ("*.teams.example.com", "teams"),
        "special.eu.teams.example.com": ("special.eu.teams.example.com", "special"),
        "voip.example.com": ("voip.example.com", "voip"),
    }
    for name, (rule, owner) in cases.items():
        match = m.match(name)
        assert match is not None, name
        assert (match.rule, match.owner) == (rule, owner)
        assert m.owner(name) == owner
    for name in ("teams.example.com", "example.com", "xteams.example.com", "sub.voip.example.com"):
        assert m.match(name) is None
        assert m.owner(name) is None


def test_with_changes_leaves_the_original_alone() -> None:
    m = build(("a.example.com", "x"))
    m2 = m.with_changes(added=[("*.example.com", "y")], removed=["a.example.com"])
    assert m.owner("a.example.com") == "x"
    assert m.owner("b.example.com") is None
    assert m2.owner("a.example.com") == "y"
    assert len(m) == 1 and len(m2) == 1


def reference(rules: dict[str, str], name: str) -> tuple[str, str] | None:
    """Brute force over every rule: the definition of DESIGN.md, written as plainly as possible."""
    if name in rules:
        return name, rules[name]
    best: str | None = None
    for rule in rules:
        if rule.startswith("*."):
            base = rule[2:]
            if name.endswith("." + base) and (best is None or len(base) > len(best) - 2):
                best = rule
    return (best, rules[best]) if best else None


LABELS = st.sampled_from(["a", "b", "c", "teams", "eu", "x"])
NAMES = st.lists(LABELS, min_size=1, max_size=5).map(lambda ls: ".".join([*ls, "example"]))


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.tuples(st.booleans(), NAMES).map(lambda t: ("*." if t[0] else "") + t[1]),
        st.sampled_from(["o1", "o2", "o3"]),
        max_size=25,
    ),
    st.lists(NAMES, min_size=1, max_size=30),
)
def test_matcher_agrees_with_brute_force(rules: dict[str, str], queries: list[str]) -> None:
    m = Matcher.from_rules(rules.items())
    for name in queries:
        expected = reference(rules, name)
        match = m.match(name)
        assert (None if match is None else (match.rule, match.owner)) == expected


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.booleans(), NAMES), max_size=15),
    st.lists(st.tuples(st.booleans(), NAMES), max_size=15),
    st.lists(st.tuples(st.booleans(), NAMES), max_size=10),
    st.lists(NAMES, min_size=1, max_size=20),
)
def test_incremental_changes_equal_a_fresh_build(
    start: list[tuple[bool, str]],
    add: list[tuple[bool, str]],
    remove: list[tuple[bool, str]],
    queries: list[str],
) -> None:
    def text(item: tuple[bool, str]) -> str:
        return ("*." if item[0] else "") + item[1]

    rules = {text(i): "old" for i in start}
    changed = Matcher.from_rules(rules.items()).with_changes(
        added=[(text(i), "new") for i in add], removed=[text(i) for i in remove]
    )
    for item in remove:
        rules.pop(text(item), None)
    rules.update({text(i): "new" for i in add})
    fresh = Matcher.from_rules(rules.items())
    for name in queries:
        assert changed.match(name) == fresh.match(name)
        assert changed.owner(name) == fresh.owner(name)
