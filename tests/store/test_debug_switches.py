"""Debug switches (sipzone.model.debug) in the store: a snapshot takes them along the change
log without a reload, the DNS keeps its tables, and only the provider sets them."""

from __future__ import annotations

import pytest

from sipzone.dns import DnsConfig
from sipzone.dns.answers import Authority, follows
from sipzone.model.debug import new_switch, parse_duration, switch_of
from sipzone.model.errors import InvalidValue, NotPermitted
from sipzone.model.snapshot import Delta
from sipzone.store.repository import Store


def test_a_switch_travels_with_the_snapshot_without_a_reload(store: Store) -> None:
    store.add_zone("example.com")
    store.add_domain("cust42.example.com")
    before = store.load_snapshot()
    dns = Authority(before, DnsConfig())
    assert dns.trace is None

    switch = new_switch("dns", 2e9, 600, name="CUST42.example.com.")
    store.set_debug(switch)
    after = store.advance(before)
    assert after.delta == Delta((), ()) and after.matcher is before.matcher  # no reload
    assert switch_of(after.settings, "dns") == switch
    assert after.settings.get("email_domain") == before.settings.get("email_domain")
    assert follows(before, after)  # the DNS updates its tables in place, no rebuild
    dns.update(after)
    assert dns.trace is not None and dns.trace.switch.name == "cust42.example.com"

    store.debug_off(["dns"])
    off = store.advance(after)
    assert switch_of(off.settings, "dns") is None
    dns.update(off)
    assert dns.trace is None


def test_an_ended_switch_is_not_taken(store: Store) -> None:
    store.set_debug(new_switch("sip", 1000.0, 60, peer="192.0.2.7"))  # ended in 1970
    snapshot = store.load_snapshot()
    assert switch_of(snapshot.settings, "sip") is not None
    assert Authority(snapshot, DnsConfig()).trace is None  # (a DNS switch only, anyway)


def test_only_the_provider_switches_and_values_are_checked(store: Store) -> None:
    store.add_tenant("acme")
    acme = Store(store.url, actor="acme")
    try:
        with pytest.raises(NotPermitted):
            acme.set_debug(new_switch("sip", 0.0, 60, peer="192.0.2.7"))
    finally:
        acme.close()
    for bad in ("0", "25h", "10d", "m", "-5m"):
        with pytest.raises(InvalidValue):
            parse_duration(bad)
    assert parse_duration("90") == 90 and parse_duration("10m") == 600
    with pytest.raises(InvalidValue):
        new_switch("sip", 0.0, 60)  # neither peer nor name
    with pytest.raises(InvalidValue):
        new_switch("sip", 0.0, 60, peer="192.0.2.7", name="a.example.com")
    with pytest.raises(InvalidValue):
        new_switch("xmpp", 0.0, 60, peer="192.0.2.7")
    # A value no sipzone wrote is no switch, never a broken snapshot.
    assert switch_of({"debug_sip": "{not json"}, "sip") is None
    assert switch_of({"debug_sip": '{"until": 1, "peer": "nope"}'}, "sip") is None
