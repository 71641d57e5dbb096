"""The voicemail store's endpoints as `email-domain set --imap/--submission` writes them."""

from __future__ import annotations

import pytest

from sipzone.model.errors import BadAddress, BadWord, Conflict, OutOfRange
from sipzone.model.mail import MailEndpoint, endpoint_for, parse_endpoint, parse_endpoints


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("imap.example.com:993", MailEndpoint(993, "imap.example.com")),
        ("IMAP.Example.COM.:993", MailEndpoint(993, "imap.example.com")),
        ("993", MailEndpoint(993)),
        ("eu=vm-eu.example.com:10993", MailEndpoint(10993, "vm-eu.example.com", "eu")),
        ("eu=993", MailEndpoint(993, None, "eu")),
    ],
)
def test_endpoints_parse_and_print_back(text: str, endpoint: MailEndpoint) -> None:
    assert parse_endpoint("imap", text) == endpoint
    assert parse_endpoint("imap", endpoint.text) == endpoint


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("imap.example.com", BadAddress, "[SITE=][HOST:]PORT"),
        (":993", BadAddress, "[SITE=][HOST:]PORT"),
        ("127.0.0.1:993", BadAddress, "not an address"),
        ("imap.example.com:0", OutOfRange, "outside 1-65535"),
        ("imap.example.com:70000", OutOfRange, "outside 1-65535"),
        ("bad site=993", BadWord, "one DNS label"),
        ("imap.example.com:993\r\nx", BadAddress, "[SITE=][HOST:]PORT"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(text: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_endpoint("imap", text)


def test_one_endpoint_per_site_and_the_site_wins() -> None:
    endpoints = parse_endpoints("imap", ["us=vm-us.example.com:993", "993"])
    assert [e.text for e in endpoints] == ["993", "us=vm-us.example.com:993"]
    assert endpoint_for(endpoints, "us") == MailEndpoint(993, "vm-us.example.com", "us")
    assert endpoint_for(endpoints, "eu") == MailEndpoint(993)
    assert endpoint_for(parse_endpoints("imap", ["us=993"]), "eu") is None
    with pytest.raises(Conflict, match="twice for site 'us'"):
        parse_endpoints("imap", ["us=993", "us=imap.example.com:993"])
    with pytest.raises(Conflict, match="twice for every site"):
        parse_endpoints("imap", ["993", "imap.example.com:993"])
