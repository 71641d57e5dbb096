import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipzone.model.errors import NotPermitted, TenantCycle, UnknownTenant
from sipzone.model.matcher import Matcher
from sipzone.model.tenancy import (
    PROVIDER,
    TenancyTree,
    Tenant,
    check_may_own,
    controller,
)


def chain_tree() -> TenancyTree:
    return TenancyTree(
        [
            Tenant("acme", PROVIDER, brand_name="ACME", upstream="sip:core.acme.example"),
            Tenant("acme-eu", "acme", support_email="eu@acme.example"),
            Tenant("cust1", "acme-eu", brand_name="Cust One"),
            Tenant("other", PROVIDER),
        ]
    )


def test_brand_and_upstream_inherit_down_the_chain() -> None:
    tree = chain_tree()
    cust = tree.view("cust1")
    assert cust.chain == ("cust1", "acme-eu", "acme", PROVIDER)
    assert cust.brand.brand_name == "Cust One"
    assert cust.brand.support_email == "eu@acme.example"
    assert cust.upstream == "sip:core.acme.example"
    assert tree.view("other").upstream is None


def test_cycles_and_orphans_are_refused() -> None:
    with pytest.raises(TenantCycle):
        TenancyTree([Tenant("a", "b"), Tenant("b", "a")])
    with pytest.raises(UnknownTenant):
        TenancyTree([Tenant("a", "ghost")])
    tree = chain_tree()
    with pytest.raises(TenantCycle):
        tree.with_tenant(Tenant("acme", "cust1"))


def test_reseller_cannot_claim_inside_anothers_space() -> None:
    tree = chain_tree()
    rules = Matcher.from_rules([("*.teams.example.com", "acme"), ("voip.other.example", "other")])
    check_may_own("cust42.teams.example.com", "cust1", PROVIDER, tree, rules)
    check_may_own("*.eu.teams.example.com", "acme-eu", "acme", tree, rules)
    with pytest.raises(NotPermitted, match="namespace of tenant 'acme'"):
        check_may_own("cust42.teams.example.com", "other", PROVIDER, tree, rules)
    with pytest.raises(NotPermitted):
        check_may_own("x.voip.other.example", "acme", PROVIDER, tree, rules)
    with pytest.raises(NotPermitted, match="not below it"):
        check_may_own("free.example.net", "other", "acme", tree, rules)
    # an exact rule for the name itself does not decide who may carve it (the add is a conflict)
    assert controller("voip.other.example", rules, above=True) == PROVIDER


TENANTS = ["t0", "t1", "t2", "t3", "t4", "t5"]
LABELS = st.sampled_from(["a", "b", "c", "d"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(lambda ls: ".".join([*ls, "example"]))


@st.composite
def trees(draw: st.DrawFn) -> TenancyTree:
    tenants = []
    for i, name in enumerate(TENANTS):
        parent = draw(st.sampled_from([PROVIDER, *TENANTS[:i]]))
        tenants.append(Tenant(name, parent))
    return TenancyTree(tenants)


def brute_controller(name: str, rules: dict[str, str], above: bool) -> str:
    """The namespace rule's definition written as a scan: the most specific covering rule."""
    if not above and name in rules:
        return rules[name]
    best: tuple[int, int, str] | None = None  # (base length, wildcard wins ties, owner)
    for text, owner in rules.items():
        wildcard = text.startswith("*.")
        base = text[2:] if wildcard else text
        if name.endswith("." + base):
            key = (len(base), int(wildcard), owner)
            if best is None or key[:2] > best[:2]:
                best = key
    return best[2] if best else PROVIDER


@settings(max_examples=200)
@given(
    trees(),
    st.lists(
        st.tuples(st.booleans(), NAMES, st.sampled_from([PROVIDER, *TENANTS])),
        max_size=30,
    ),
)
def test_namespace_rule_holds_for_random_trees(
    tree: TenancyTree, attempts: list[tuple[bool, str, str]]
) -> None:
    """Random adds go through the rule; each is accepted exactly when the most specific rule
    already covering the name (found by a plain scan) belongs to the new owner or one of its
    ancestors, so no tenant ever gains a name inside an unrelated tenant's space."""
    rules: dict[str, str] = {}
    for wildcard, name, owner in attempts:
        text = ("*." if wildcard else "") + name
        if text in rules:
            continue
        expected_ok = tree.is_ancestor_or_self(brute_controller(name, rules, not wildcard), owner)
        try:
            check_may_own(text, owner, PROVIDER, tree, Matcher.from_rules(rules.items()))
        except NotPermitted:
            assert not expected_ok, f"{text} for {owner} refused, but {rules}"
            continue
        assert expected_ok, f"{text} for {owner} accepted, but {rules}"
        rules[text] = owner
