"""The email domain's RFC 6186 / RFC 8314 names: each serving site's endpoint in the client's
region order with the site's weight, "." for services not offered, health followed, and the
autoconfig hosts; as the live responder answers them."""

from __future__ import annotations

from dataclasses import replace

import dns.edns
import dns.message
import dns.rcode

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from tests.dns.conftest import SITE_A, SITE_B, snapshot

ENDPOINTS = {
    "email_imap": "993 site-b=vm-us.example.org:10993",
    "email_submission": "smtp.example.com:465",
}


def answer(auth: Authority, name: str, rdtype: str, client: str = "127.0.0.1") -> list[str]:
    query = dns.message.make_query(name, rdtype)
    reply = dns.message.from_wire(auth.respond(query.to_wire(), client) or b"")
    assert reply.rcode() == dns.rcode.NOERROR, name
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def test_imaps_follows_the_clients_region_like_sip() -> None:
    auth = Authority(snapshot(settings=ENDPOINTS), DnsConfig())
    name = "_imaps._tcp.mail.example.com"
    # site-a serves 127.0.0.0/8 first: its own host; site-b its own endpoint
    assert answer(auth, name, "SRV", "127.0.0.1") == [
        "10 100 993 site-a.example.com.",
        "20 50 10993 vm-us.example.org.",
    ]
    assert answer(auth, name, "SRV", "198.51.100.7") == [
        "10 50 10993 vm-us.example.org.",
        "20 100 993 site-a.example.com.",
    ]
    # one installation-wide host is listed once
    assert answer(auth, "_submissions._tcp.mail.example.com", "SRV") == [
        "10 100 465 smtp.example.com."
    ]
    # the site host's address rides along for the client that asked
    query = dns.message.make_query(name, "SRV")
    reply = dns.message.from_wire(auth.respond(query.to_wire(), "127.0.0.1") or b"")
    glue = {(rrset.name.to_text(), rd.to_text()) for rrset in reply.additional for rd in rrset}
    assert ("site-a.example.com.", "192.0.2.10") in glue


def test_an_ecs_client_gets_its_regions_order_with_a_scope() -> None:
    auth = Authority(snapshot(settings=ENDPOINTS), DnsConfig())
    query = dns.message.make_query(
        "_imaps._tcp.mail.example.com", "SRV", use_edns=0,
        options=[dns.edns.ECSOption("198.51.100.0", 24)],
    )  # fmt: skip
    reply = dns.message.from_wire(auth.respond(query.to_wire(), "203.0.113.1") or b"")
    assert reply.answer[0][0].to_text() == "10 50 10993 vm-us.example.org."
    [ecs] = reply.options
    assert isinstance(ecs, dns.edns.ECSOption) and ecs.scopelen > 0


def test_services_not_offered_say_dot() -> None:
    auth = Authority(snapshot(settings={"email_imap": "993"}), DnsConfig())
    for label in ("_imap", "_pop3", "_pop3s", "_submission", "_submissions"):
        assert answer(auth, f"{label}._tcp.mail.example.com", "SRV") == ["0 0 0 ."], label
    # nothing configured at all: every name says "."
    bare = Authority(snapshot(), DnsConfig())
    assert answer(bare, "_imaps._tcp.mail.example.com", "SRV") == ["0 0 0 ."]
    assert answer(bare, "_tcp.mail.example.com", "SRV") == []  # an empty non-terminal


def test_a_site_out_of_service_leaves_the_list() -> None:
    down = replace(SITE_A, healthy=False)
    auth = Authority(snapshot(sites=(down, SITE_B), settings=ENDPOINTS), DnsConfig())
    assert answer(auth, "_imaps._tcp.mail.example.com", "SRV", "127.0.0.1") == [
        "10 50 10993 vm-us.example.org."
    ]
    assert answer(auth, "autoconfig.mail.example.com", "A") == ["198.51.100.10"]


def test_autoconfig_hosts_have_the_email_domains_addresses() -> None:
    auth = Authority(snapshot(settings=ENDPOINTS), DnsConfig())
    for host in ("autoconfig", "autodiscover"):
        assert answer(auth, f"{host}.mail.example.com", "A") == ["192.0.2.10", "198.51.100.10"]
        assert answer(auth, f"{host}.mail.example.com", "AAAA") == ["2001:db8::10"]
        assert answer(auth, f"{host}.mail.example.com", "MX") == []
    assert answer(auth, "mail.example.com", "MX") == ["10 mail.example.com."]


def test_a_bad_stored_endpoint_is_left_out_not_fatal() -> None:
    auth = Authority(snapshot(settings={"email_imap": "993 :x"}), DnsConfig())
    assert answer(auth, "_imaps._tcp.mail.example.com", "SRV") == ["0 0 0 ."]
    assert answer(auth, "voip.example.com", "A")  # the rest of the zone answers
