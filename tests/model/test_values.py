"""The value rules of sites and tenants (sipzone.model.snapshot, sipzone.model.tenancy)."""

import ipaddress

import pytest

from sipzone.model import errors
from sipzone.model.snapshot import (
    check_order,
    check_port,
    check_site_host_fits,
    check_weight,
    parse_network,
    parse_region,
    parse_site_name,
    parse_vip,
)
from sipzone.model.tenancy import (
    check_new_tenant_name,
    parse_tenant_field,
    parse_tenant_name,
)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("fe80::1%eth0", "scope id"),
        ("2001:db8::1%1", "scope id"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:192.0.2.1", "IPv4-mapped"),
        ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"),
        ("1.2.3", "not an IPv4 or IPv6 address"),
        ("010.0.0.1", "not an IPv4 or IPv6 address"),
        ("example.com", "not an IPv4 or IPv6 address"),
    ],
)
def test_virtual_ips_must_be_plain_unicast_addresses(text: str, fragment: str) -> None:
    with pytest.raises(errors.BadAddress, match=fragment):
        parse_vip(text)


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", "192.0.2.10", "2001:db8::10", "8.8.8.8"])
def test_loopback_documentation_and_public_addresses_are_virtual_ips(text: str) -> None:
    assert parse_vip(f" {text} ") == ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.0.0.1/8", "host bits"),
        ("2001:db8::1/32", "host bits"),
        ("10.0.0.0/33", "not a CIDR"),
        ("fe80::%eth0/64", "scope id"),
        ("224.0.0.0/4", "multicast"),
        ("eu", "not a CIDR"),
    ],
)
def test_client_networks_are_strict_cidrs(text: str, fragment: str) -> None:
    with pytest.raises(errors.BadNetwork, match=fragment):
        parse_network(text)
    assert str(parse_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert str(parse_network("0.0.0.0/0")) == "0.0.0.0/0"  # everyone else: a fallback region


def test_numbers_are_bounded_by_the_dns_fields_they_become() -> None:
    huge = 99999999999999999999
    for check, bad in (
        (check_weight, [-1, 65536, huge]),
        (check_order, [-1, 65536, huge]),
        (lambda v: check_port("udp", v), [-5, 65536, huge]),
    ):
        for value in bad:
            with pytest.raises(errors.OutOfRange, match=str(value)):
                check(value)
    assert check_weight(0) == 0 and check_weight(65535) == 65535
    assert check_port("tls", 5061) == 5061
    assert check_port("tls", 0) == 0  # the site does not offer TLS


def test_site_names_are_labels_and_regions_words() -> None:
    assert parse_site_name("eu-1") == "eu-1"
    for bad in ("eu_1", "eu.1", "-eu", "eu-", "a" * 64, ""):
        with pytest.raises(errors.BadWord):
            parse_site_name(bad)
    assert parse_region("us-east") == "us-east"
    for bad in ("", "us east", "eu\n", "r" * 101):
        with pytest.raises(errors.BadWord):
            parse_region(bad)


def test_a_site_without_host_must_fit_under_every_zone() -> None:
    zone = "z" * 60 + "." + "y" * 60 + "." + "x" * 60 + ".example.com"  # 194 octets
    check_site_host_fits("a" * 58, None, [zone])  # 58 + 1 + 194 = 253
    check_site_host_fits("a" * 63, "sip.example.com", [zone])  # a host: no synthesis
    with pytest.raises(errors.NoRoomForServiceNames, match="--host"):
        check_site_host_fits("a" * 59, None, ["example.com", zone])


def test_tenant_names_have_a_syntax_and_no_case_twins() -> None:
    assert parse_tenant_name("Acme_EU.1-x") == "Acme_EU.1-x"
    for bad in ("", "x y", "-acme", "_acme", "acme\n", "a" * 101, "\u0430cme", "acme:1"):
        with pytest.raises(errors.BadTenantName):
            parse_tenant_name(bad)
    check_new_tenant_name("acme", ["provider", "other"])
    with pytest.raises(errors.TenantCaseTwin, match="only in case"):
        check_new_tenant_name("Acme", ["provider", "acme"])
    with pytest.raises(errors.TenantCaseTwin):
        check_new_tenant_name("PROVIDER", ["provider"])
    with pytest.raises(errors.Conflict, match="exists already"):
        check_new_tenant_name("acme", ["acme"])


@pytest.mark.parametrize(
    ("field", "value", "error", "fragment"),
    [
        ("brand_name", "ACME\r\nX-Injected: 1", errors.BadText, "U+000D"),
        ("brand_name", "ACME\x00", errors.BadText, "U+0000"),
        ("brand_name", "\u202eEMCA", errors.BadText, "U+202E"),
        ("brand_name", "A" * 201, errors.BadText, "at most 200"),
        ("brand_name", "A" * 100_000, errors.BadText, "at most 200"),
        ("support_email", "support", errors.BadEmail, "not an address"),
        ("support_email", "a b@example.com", errors.BadEmail, "not an address"),
        ("support_email", "support@exa_mple.com", errors.BadEmail, "'_'"),
        ("support_email", "ACME <support@example.com>", errors.BadEmail, "not an address"),
        ("support_email", "s@example.com\nBcc: x@evil.example", errors.BadText, "U+000A"),
        ("support_email", "s@" + "a" * 250 + ".com", errors.BadText, "at most 254"),
        ("web_url", "javascript:alert(1)", errors.BadURL, "http(s)"),
        ("web_url", "ftp://example.com/", errors.BadURL, "http(s)"),
        ("web_url", "https://", errors.BadURL, "http(s)"),
        ("web_url", "https://user:pw@example.com/", errors.BadURL, "user name"),
        ("web_url", "https://example.com/a b", errors.BadURL, "white space"),
        ("web_url", "https://example.com:99999/", errors.BadURL, "not a URL"),
        ("logo_url", "https://example.com/\r\nlogo.png", errors.BadText, "U+000D"),
        ("logo_url", "https://example.com/" + "a" * 500, errors.BadText, "at most 500"),
        ("upstream", "sip:core.example:5060\x00", errors.BadSipURI, "not a SIP URI"),
        ("upstream", "http://core.example", errors.BadSipURI, "not a SIP URI"),
        ("upstream", "sip:<core>", errors.BadSipURI, "not a SIP URI"),
        ("upstream", "sip:" + "c" * 500, errors.BadSipURI, "at most 500"),
    ],
)
def test_brand_fields_refuse_controls_overlong_and_malformed_values(
    field: str, value: str, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        parse_tenant_field(field, value)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("brand_name", "Bücher & Söhne — VoIP"),
        ("support_email", "support+voip@acme.example"),
        ("support_email", "help@b\u00fccher.example"),
        ("web_url", "https://acme.example/voip?x=1#top"),
        ("logo_url", "http://[2001:db8::1]:8080/logo.png"),
        ("upstream", "sip:core.acme.example:5060;transport=tcp"),
        ("upstream", "sips:[2001:db8::1]:5061"),
    ],
)
def test_good_brand_fields_are_kept_as_given(field: str, value: str) -> None:
    assert parse_tenant_field(field, value) == value
    assert parse_tenant_field(field, "") is None
    assert parse_tenant_field(field, None) is None


def test_a_snapshot_never_shows_its_settings() -> None:
    from sipzone.model.snapshot import Snapshot
    from sipzone.model.tenancy import TenancyTree

    snap = Snapshot.build(1, TenancyTree([]), [], settings={"sip_branch_secret": "c2VjcmV0"})
    assert snap.settings["sip_branch_secret"] == "c2VjcmV0"
    assert "c2VjcmV0" not in repr(snap)
