import dns.name
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipzone.model import errors
from sipzone.model import names as names_mod
from sipzone.model.names import (
    DomainName,
    WildcardName,
    check_stored_rule,
    invalid_stored_rules,
    lookup_key,
    parse_domain,
    parse_rule,
    parse_zone,
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


# -- the room the DNS needs around a name (issue 7, item 5) --------------------------------


def long_name(octets: int, suffix: str = "example.com") -> str:
    """A name of exactly ``octets`` octets ending in ``suffix``, in labels of at most 63."""
    labels: list[str] = []
    room = octets - len(suffix) - 1
    while room > 0:
        size = min(63, room) if room - min(63, room) != 1 else 61
        labels.append("a" * size)
        room -= size + 1
    name = ".".join([*labels, suffix])
    assert len(name) == octets, (len(name), octets)
    return name


def test_sip_domains_leave_room_for_every_service_name_the_dns_writes() -> None:
    from sipzone.dns.records import PROTOCOL_LABELS, SERVICES

    prefixes = [f"{first}.{second}." for first, second, _, _ in SERVICES]
    prefixes += [f"{label}." for label in PROTOCOL_LABELS]
    assert max(map(len, prefixes)) <= len(names_mod.SERVICE_PREFIX)
    longest = parse_rule(long_name(names_mod.MAX_SIP_DOMAIN))
    for prefix in prefixes:
        # dnspython refuses a name over 255 octets on the wire; these must all fit.
        dns.name.from_text(prefix + longest.text)
    wildcard = parse_rule("*." + long_name(names_mod.MAX_SIP_DOMAIN - 2))
    assert isinstance(wildcard, WildcardName)
    for prefix in prefixes:
        dns.name.from_text(prefix + wildcard.base.text)
        dns.name.from_text(prefix + "x." + wildcard.base.text)  # a name the wildcard admits


@pytest.mark.parametrize(
    "text",
    [
        long_name(243),
        long_name(250),
        "*." + long_name(241),
    ],
)
def test_names_too_long_for_their_service_names_are_refused(text: str) -> None:
    with pytest.raises(errors.NoRoomForServiceNames) as info:
        parse_rule(text)
    assert "at most 242" in str(info.value) and "_sips._tcp." in str(info.value)


def test_zone_names_leave_room_for_the_soa_mailbox() -> None:
    assert parse_zone(long_name(242)).text == long_name(242)
    with pytest.raises(errors.NoRoomForServiceNames, match="hostmaster"):
        parse_zone(long_name(243))
    dns.name.from_text("hostmaster." + long_name(names_mod.MAX_ZONE))


# -- one script per label (issue 7, item 12) -----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "p\u0430ypal.example.com",  # Cyrillic a among Latin
        "xn--pypal-4ve.example.com",  # the same, given as its A-label
        "\u03b1pple.example.com",  # Greek alpha
        "g\u043e\u043egle.example.com",  # two Cyrillic o
        "ex\u0430mple-\u043f\u0440\u0438\u043c\u0435\u0440.example",  # Latin-Cyrillic words
        "*.p\u0430ypal.example.com",
    ],
)
def test_labels_mixing_scripts_are_refused(text: str) -> None:
    with pytest.raises(errors.MixedScript, match="mixes scripts"):
        parse_rule(text)


@pytest.mark.parametrize(
    "text",
    [
        "b\u00fccher.example",  # Latin with diacritics
        "\u043f\u0440\u0438\u043c\u0435\u0440.example.com",  # all Cyrillic
        "\u043f\u0440\u0438\u043c\u0435\u04401.example.com",  # Cyrillic and digits
        "\u03b5\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac.example",  # Greek
        "\u65e5\u672c\u8a9e\u306e\u30b5\u30a4\u30c8.example",  # Han, Hiragana, Katakana
        "\ud55c\uad6d\uc5b4.example",  # Hangul
        "\u0645\u062b\u0627\u0644\u0661.example",  # Arabic with an Arabic-Indic digit
        "caf\u00e9-bar.example",
    ],
)
def test_labels_in_one_script_are_allowed(text: str) -> None:
    rule = parse_rule(text)
    assert parse_rule(rule.text) == rule


# -- what a store read accepts --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a..b.example",
        ".a.example",
        "a.example.",
        "nodot",
        "",
        "A.example",
        "a_b.example",
        "b\u00fccher.example",
        "x.*.example",
        "*.*.example",
        "*x.example",
        "a" * 64 + ".example",
        long_name(243),
    ],
)
def test_store_reads_refuse_what_the_services_cannot_serve(text: str) -> None:
    with pytest.raises(errors.InvalidName):
        check_stored_rule(text)
    good = [f"c{i}.example.com" for i in range(50)] + ["*.teams.example.com"]
    for position in (0, 25, len(good)):
        mixed = [*good[:position], text, *good[position:]]
        assert [t for t, _ in invalid_stored_rules(mixed)] == [text]


stored_text = st.text(alphabet="ab0-.*_A\u00fc", min_size=0, max_size=12) | st.sampled_from(
    ["x.example.com", "*.teams.example.com", long_name(242), long_name(243)]
)


@given(st.lists(stored_text, max_size=8))
def test_the_fast_store_check_agrees_with_the_one_by_one_check(texts: list[str]) -> None:
    def bad(text: str) -> bool:
        try:
            check_stored_rule(text)
        except errors.InvalidName:
            return True
        return False

    assert [t for t, _ in invalid_stored_rules(texts)] == [t for t in texts if bad(t)]
