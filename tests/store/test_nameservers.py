"""The name servers every zone lists as NS (issue 12, item 7): required before a zone, with
their addresses when they are inside one; a write that would leave one without an address
changes nothing."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import dns.message
import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority
from sipzone.dns.export import export_zone
from sipzone.dns.records import Records
from sipzone.model import errors
from sipzone.model.snapshot import NameServer
from sipzone.store.backup import dump
from sipzone.store.repository import Store
from tests.dns.conftest import need


def test_a_zone_without_stored_name_servers_lists_the_fallback(store: Store) -> None:
    """`zone add` keeps working before any `nameserver add` (scripts rely on it): the zone's
    NS are then the site hosts, as in stores older than the setting, until one is stored."""
    store.add_site("eu1", vips=["192.0.2.10"], region="eu", host="sip.example.com")
    store.add_zone("example.com")
    assert store.list_zones() == ["example.com"] and store.nameservers() == ()
    assert ns_of(store, "example.com") == ["sip.example.com."]
    store.add_nameserver("ns1.example.com", ["192.0.2.53", "2001:db8::53"])
    assert ns_of(store, "example.com") == ["ns1.example.com."]


def ns_of(store: Store, zone: str) -> list[str]:
    records = Records(store.load_snapshot(), DnsConfig())
    return [rd.target.to_text() for rd in records.nameservers(zone)]  # type: ignore[attr-defined]


def test_in_zone_name_servers_need_addresses_and_site_hosts_have_theirs(store: Store) -> None:
    store.add_nameserver("ns.provider.example")  # outside every zone: no address needed
    store.add_zone("example.com")
    before = store.revision()
    with pytest.raises(errors.InvalidValue, match=r"'ns1.example.com' is in zone 'example.com'"):
        store.add_nameserver("ns1.example.com")
    with pytest.raises(errors.BadAddress, match="name server address"):
        store.add_nameserver("ns1.example.com", ["fe80::1%eth0"])
    assert store.revision() == before
    # A site's SIP host serves with the site's addresses, and with no others.
    store.add_site("eu1", vips=["192.0.2.10"], region="eu", host="eu1.example.com")
    with pytest.raises(errors.Conflict, match="site 'eu1'"):
        store.add_nameserver("eu1.example.com", ["192.0.2.53"])
    store.add_nameserver("eu1.example.com")
    # ... so the site may not leave the name without an address.
    before = store.revision()
    for write in (
        lambda: store.remove_site("eu1"),
        lambda: store.update_site("eu1", host="sip.example.com"),
    ):
        with pytest.raises(errors.InvalidValue, match=r"'eu1\.example\.com'"):
            write()
    assert store.revision() == before
    # A zone that would contain an address-less name server is refused.
    store.add_nameserver("ns.other.example")
    with pytest.raises(errors.InvalidValue, match=r"'ns\.other\.example' is in zone"):
        store.add_zone("other.example")
    assert "other.example" not in store.list_zones()


def test_names_listed_in_order_removed_but_never_the_last(store: Store) -> None:
    store.add_nameserver("ns1.example.com", ["192.0.2.53"])
    store.add_nameserver("ns2.provider.example")
    with pytest.raises(errors.Conflict):
        store.add_nameserver("NS2.provider.example.")
    store.add_zone("example.com")
    assert store.nameservers() == (
        NameServer("ns1.example.com", (ipaddress.ip_address("192.0.2.53"),)),
        NameServer("ns2.provider.example"),
    )
    with pytest.raises(errors.NotFound):
        store.remove_nameserver("ns3.provider.example")
    store.remove_nameserver("ns1.example.com")
    with pytest.raises(errors.InvalidValue, match="last name server"):
        store.remove_nameserver("ns2.provider.example")
    assert [s.name for s in store.nameservers()] == ["ns2.provider.example"]
    assert dump(store)["settings"]["nameservers"] == "ns2.provider.example"


def test_the_dns_publishes_them_from_the_store(store: Store) -> None:
    store.add_nameserver("ns1.example.com", ["192.0.2.53"])
    store.add_nameserver("ns2.provider.example")
    store.add_zone("example.com")
    store.add_site("eu1", vips=["192.0.2.10"], region="eu")
    auth = Authority(store.load_snapshot(), DnsConfig())

    def ask(name: str, rdtype: str) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        return dns.message.from_wire(auth.respond(query.to_wire(), "127.0.0.1") or b"")

    ns = ask("example.com", "NS")
    assert sorted(rd.to_text() for rd in ns.answer[0]) == [
        "ns1.example.com.",
        "ns2.provider.example.",
    ]
    assert [(r.name.to_text(), r[0].to_text()) for r in ns.additional] == [
        ("ns1.example.com.", "192.0.2.53")
    ]
    assert ask("example.com", "SOA").answer[0][0].mname.to_text() == "ns1.example.com."


def test_zone_files_carry_them_and_named_checkzone_accepts(store: Store, tmp_path: Path) -> None:
    """What a secondary transfers: the NS and the in-zone name server's address records."""
    store.add_nameserver("ns1.example.com", ["192.0.2.53"])
    store.add_nameserver("ns2.provider.example")
    store.add_zone("example.com")
    store.add_site("eu1", vips=["192.0.2.10"], region="eu")
    text = export_zone(store.load_snapshot(), "example.com")
    lines = {" ".join(line.split()) for line in text.splitlines()}
    assert {"@ 300 IN NS ns1", "@ 300 IN NS ns2.provider.example.", "ns1 300 IN A 192.0.2.53"} <= (
        lines
    ), text
    path = tmp_path / "example.com.zone"
    path.write_text(text)
    check = subprocess.run(
        [need("named-checkzone"), "example.com", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
