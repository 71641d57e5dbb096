"""The Teams profile's header rules, bytes in and bytes out: never ``sips:`` toward Microsoft
(each URI written ``sip:...;transport=tls``, an addr-spec made a name-addr so its header
parameters stay the header's), no ``replaces`` in Supported, and the ``+`` of a number kept."""

from __future__ import annotations

import pytest

from sipzone.sip.teams import no_sips, sip_not_sips, toward_ms


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (b"sips:+4930123@sip.pstnhub.microsoft.com;user=phone",
         b"sip:+4930123@sip.pstnhub.microsoft.com;user=phone;transport=tls"),
        (b"SIPS:a@b.example;transport=tcp;lr", b"sip:a@b.example;lr;transport=tls"),
        (b"sips:a@b.example?Subject=x", b"sip:a@b.example;transport=tls?Subject=x"),
        (b"sip:+4930123@sip.pstnhub.microsoft.com", b"sip:+4930123@sip.pstnhub.microsoft.com"),
        (b"tel:+4930123", b"tel:+4930123"),
    ],
)  # fmt: skip
def test_a_sips_uri_becomes_sip_over_tls(uri: bytes, expected: bytes) -> None:
    assert sip_not_sips(uri) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"sips:+4940999@cust42.teams.example.com;tag=c1",
         b"<sip:+4940999@cust42.teams.example.com;transport=tls>;tag=c1"),
        (b'"sips: fan" <sips:a@b.example;lr>, sips:c@d.example',
         b'"sips: fan" <sip:a@b.example;lr;transport=tls>, <sip:c@d.example;transport=tls>'),
        (b"<sip:a@b.example>;x=sips", b"<sip:a@b.example>;x=sips"),
    ],
)  # fmt: skip
def test_every_sips_uri_of_a_header_value_is_rewritten(value: bytes, expected: bytes) -> None:
    assert no_sips(value) == expected


def test_supported_loses_replaces_and_nothing_else() -> None:
    assert toward_ms(b"Supported", b"replaces, 100rel,timer") == b"100rel, timer"
    assert toward_ms(b"Supported", b"Replaces") is None  # nothing left: the line goes
    assert toward_ms(b"Supported", b"timer") == b"timer"
    assert toward_ms(b"Subject", b"about sips: and replaces") == b"about sips: and replaces"
    assert (
        toward_ms(b"To", b"<sips:+4930123@x.example>") == b"<sip:+4930123@x.example;transport=tls>"
    )
