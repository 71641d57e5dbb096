import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipzone.model import errors
from sipzone.model.names import (
    DomainName,
    WildcardName,
    lookup_key,
    parse_domain,
    parse_rule,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("voip.acme.example", "voip.acme.example"),
        ("VoIP.ACME.Example.", "voip.acme.example"),
        ("  voip.acme.example  ", "voip.acme.example"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.c1.example", "a-b.c1.example"),
        ("ΑΒΓ.example", "xn--mxacd.example"),
    ],
)
def test_exact_names_normalise(text: str, expected: str) -> None:
    name = parse_rule(text)
    assert isinstance(name, DomainName)
    assert name.text == expected


def test_wildcard_parses_to_its_base() -> None:
    rule = parse_rule("*.Teams.Example.COM.")
    assert isinstance(rule, WildcardName)
    assert rule.text == "*.teams.example.com"
    assert rule.base.text == "teams.example.com"
    assert rule.covers("cust42.teams.example.com")
    assert rule.covers("a.b.teams.example.com")
    assert not rule.covers("teams.example.com")
    assert not rule.covers("xteams.example.com")


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("", errors.EmptyLabel, "empty"),
        ("a..example", errors.EmptyLabel, "label 2"),
        (".a.example", errors.EmptyLabel, "label 1"),
        ("a_b.example", errors.BadCharacter, "label 'a_b' has '_'"),
        ("a b.example", errors.BadCharacter, "' '"),
        ("-ab.example", errors.BadHyphen, "'-ab'"),
        ("ab-.example", errors.BadHyphen, "'ab-'"),
        ("ab--cd.example", errors.BadHyphen, "positions 3-4"),
        ("xn--zz.example", errors.BadIDNA, "xn--zz"),
        ("a" * 64 + ".example", errors.LabelTooLong, "64 octets"),
        (".".join(["abcdefghi"] * 26), errors.NameTooLong, "at most 253"),
        ("localhost", errors.TooFewLabels, "one label"),
        ("192.0.2.1", errors.IPLiteral, "IP address"),
        ("2001:db8::1", errors.IPLiteral, "IP literal"),
        ("[2001:db8::1]", errors.IPLiteral, "IP literal"),
        ("host.123", errors.IPLiteral, "all-digit"),
        ("*", errors.BadWildcard, "alone"),
        ("*.com", errors.PublicSuffixWildcard, "top-level"),
        ("*.co.uk", errors.PublicSuffixWildcard, "public suffix"),
        ("*.github.io", errors.PublicSuffixWildcard, "public suffix"),
        ("a*.b.example", errors.BadWildcard, "leftmost"),
        ("x.*.b.example", errors.BadWildcard, "leftmost"),
        ("*.*.b.example", errors.BadWildcard, "second '*'"),
        ("*x.b.example", errors.BadWildcard, "leftmost"),
    ],
)
def test_rejections_name_the_problem(text: str, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        parse_rule(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, errors.InvalidName)


def test_parse_domain_refuses_wildcards() -> None:
    with pytest.raises(errors.BadWildcard):
        parse_domain("*.teams.example.com")


label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=20,
).filter(lambda s: not s.startswith("-") and not s.endswith("-") and s[2:4] != "--")
names = (
    st.lists(label, min_size=2, max_size=5)
    .map(".".join)
    .filter(lambda s: not s.split(".")[-1].isdigit())
)


@given(names, st.booleans(), st.booleans())
def test_normalisation_is_idempotent(text: str, wildcard: bool, trailing_dot: bool) -> None:
    raw = ("*." if wildcard else "") + text + ("." if trailing_dot else "")
    try:
        first = parse_rule(raw)
    except errors.PublicSuffixWildcard:
        return
    assert parse_rule(first.text) == first
    assert first.text == first.text.lower()
    assert not first.text.endswith(".")


@given(st.text(min_size=0, max_size=80))
def test_any_text_parses_or_raises_invalid_name(text: str) -> None:
    try:
        rule = parse_rule(text)
    except errors.InvalidName:
        return
    assert parse_rule(rule.text) == rule
    assert rule.text.isascii()


def test_lookup_key_matches_stored_form() -> None:
    assert lookup_key("VOIP.Acme.Example.") == "voip.acme.example"
    assert lookup_key("Bücher.example") == parse_rule("Bücher.example").text
    assert lookup_key("bad_ü.example") == ""
