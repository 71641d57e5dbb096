"""The responder as bytes in, bytes out: incremental updates, the one matching rule, fuzzing."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipzone.dns import DnsConfig
from sipzone.dns.answers import EDNS, Authority, parse_query
from sipzone.dns.protocol import RD
from tests.dns.conftest import snapshot, with_rules

NAMES = [
    "voip.example.com",
    "new.example.com",
    "x.new.example.com",
    "_sip._udp.new.example.com",
    "_udp.new.example.com",
    "cust1.teams.example.com",
    "_sips._tcp.cust1.teams.example.com",
    "teams.example.com",
    "_sip._udp.teams.example.com",
    "a.deep.example.com",
    "deep.example.com",
    "b.example.com",
    "a.b.example.com",
    "c.a.b.example.com",
    "cust1.fleet.example.com",
    "fleet.example.com",
    "example.com",
    "nope.example.com",
]
TYPES = ["A", "AAAA", "SRV", "NAPTR", "SOA", "MX", "TXT"]
CLIENTS = ["127.0.0.1", "198.51.100.9", "203.0.113.1"]


def ask(auth: Authority, name: str, rdtype: str, client: str = "127.0.0.1") -> bytes:
    query = dns.message.make_query(name, rdtype, id=4321)
    out = auth.respond(query.to_wire(), client)
    assert out is not None
    return out


def every_answer(auth: Authority) -> dict[tuple[str, str, str], bytes]:
    return {(n, t, c): ask(auth, n, t, c) for n in NAMES for t in TYPES for c in CLIENTS}


def test_incremental_updates_answer_exactly_like_a_rebuild() -> None:
    config = DnsConfig()
    current = snapshot(revision=10)
    live = Authority(current, config)
    changes = [
        (["new.example.com"], []),
        (["*.fleet.example.com"], []),
        (["a.deep.example.com"], ["voip.example.com"]),
        ([], ["*.teams.example.com"]),
        (["*.teams.example.com", "x.new.example.com"], ["new.example.com"]),
        ([], ["a.b.example.com", "a.deep.example.com"]),
        (["new.example.com"], ["*.fleet.example.com", "x.new.example.com"]),
        # A bulk import: the cache is dropped whole instead of name by name.
        ([f"bulk{i}.deep.example.com" for i in range(300)] + ["*.fleet.example.com"], []),
        ([], [f"bulk{i}.deep.example.com" for i in range(300)]),
    ]
    for added, removed in changes:
        every_answer(live)  # fill the cache, so stale entries would show
        current = with_rules(current, added, removed)
        live.update(current)
        fresh = Authority(current, config)
        assert every_answer(live) == every_answer(fresh), (added, removed)


def test_a_name_has_addresses_iff_the_matcher_admits_it() -> None:
    snap = with_rules(snapshot(), ["*.fleet.example.com", "x.y.fleet.example.com"])
    auth = Authority(snap, DnsConfig())
    labels = ["a", "fleet", "teams", "x", "y", "voip", "b", "_sip", "_udp"]
    names = [".".join(p) + ".example.com" for p in _products(labels, 3)]
    for name in names:
        reply = dns.message.from_wire(ask(auth, name, "A"))
        answered = any(r.rdtype == dns.rdatatype.A for r in reply.answer)
        # `_sip._udp.D` and `_udp.D` belong to D's SRV records, not to a SIP host (RFC 3261
        # host names have no '_'); everywhere else DNS and the edge agree name for name.
        if "_" in name:
            continue
        assert answered == (snap.check(name) is not None), name


def _products(labels: list[str], depth: int) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for _ in range(depth):
        out = [(*p, label) for p in out for label in labels] + out
    return [p for p in set(out) if p]


def test_ecs_selects_the_view_and_echoes_scope() -> None:
    auth = Authority(snapshot(), DnsConfig())

    def srv_first(subnet: str, prefix: int) -> tuple[str, int]:
        option = dns.edns.ECSOption(subnet, prefix)
        query = dns.message.make_query(
            "_sip._udp.voip.example.com", "SRV", use_edns=0, options=[option]
        )
        reply = dns.message.from_wire(auth.respond(query.to_wire(), "127.0.0.1") or b"")
        ecs = reply.options[0]
        assert isinstance(ecs, dns.edns.ECSOption)
        first = min(reply.answer[0], key=lambda rd: rd.priority)
        return first.target.to_text(), ecs.scopelen

    assert srv_first("198.51.100.0", 24) == ("site-b.example.com.", 24)
    assert srv_first("2001:db8:a::", 48) == ("site-a.example.com.", 48)
    # Source prefix 0: the client asked us not to use its address; default order, scope 0.
    assert srv_first("0.0.0.0", 0) == ("site-a.example.com.", 0)


def test_malformed_edns_gets_formerr() -> None:
    auth = Authority(snapshot(), DnsConfig())
    good = dns.message.make_query("voip.example.com", "A", use_edns=0).to_wire()
    cases = [
        good + b"\x00",  # trailing byte after the OPT record
        good[:-2] + b"\x00\x04" + b"\x00\x08\x00\x09",  # option longer than the record
        good[:-2] + b"\x00\x08" + b"\x00\x08\x00\x04\x00\x01\x18\x05",  # ECS scope set
        good[:-2] + b"\x00\x08" + b"\x00\x08\x00\x04\x00\x07\x18\x00",  # unknown family
    ]
    for wire in cases:
        reply = auth.respond(wire, "127.0.0.1")
        assert reply is not None and reply[3] & 0x0F == dns.rcode.FORMERR, wire


def test_a_query_is_taken_apart_before_any_lookup() -> None:
    ecs = dns.edns.ECSOption("198.51.100.0", 24)
    asked = dns.message.make_query(
        "Voip.Example.com", "SRV", use_edns=0, payload=1400, want_dnssec=True, options=[ecs]
    )
    wire = asked.to_wire()
    query = parse_query(wire, udp_payload=1232)
    assert isinstance(query, tuple)
    end, form, do, payload, option = query
    assert wire[12 : end - 4] == asked.question[0].name.to_wire()  # case as asked
    assert wire[end - 4 : end] == b"\x00\x21\x00\x01"  # SRV, IN
    assert (form, do, payload) == (RD | EDNS, True, 1400)
    assert option == b"\x00\x08\x00\x07" + ecs.to_wire()  # code, length, data

    plain = parse_query(dns.message.make_query("voip.example.com", "A").to_wire(), 1232)
    assert isinstance(plain, tuple)
    assert plain[1:] == (RD, False, 512, b"")

    # What needs no lookup comes back as the whole response (or None: silence).
    assert parse_query(dns.message.make_response(asked).to_wire(), 1232) is None
    assert parse_query(wire[:11], 1232) is None
    future = dns.message.make_query("voip.example.com", "A", use_edns=1).to_wire()
    refusal = parse_query(future, 1232)
    assert isinstance(refusal, bytes)
    assert dns.message.from_wire(refusal).rcode() == dns.rcode.BADVERS


def test_responses_and_other_opcodes_are_not_answered_as_queries() -> None:
    auth = Authority(snapshot(), DnsConfig())
    query = dns.message.make_query("voip.example.com", "A")
    response = dns.message.make_response(query).to_wire()
    assert auth.respond(response, "127.0.0.1") is None  # never answer an answer
    query.set_opcode(dns.opcode.UPDATE)
    reply = dns.message.from_wire(auth.respond(query.to_wire(), "127.0.0.1") or b"")
    assert reply.rcode() == dns.rcode.NOTIMP


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    out = AUTH.respond(data, "127.0.0.1")
    if out is not None:
        assert out[:2] == data[:2]


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_corrupted_queries_never_raise(position: int, value: int) -> None:
    wire = bytearray(VALID)
    wire[position % len(wire)] = value
    AUTH.respond(bytes(wire), "127.0.0.1")
    AUTH.respond(bytes(wire[: position % len(wire)]), "127.0.0.1", tcp=True)


AUTH = Authority(snapshot(), DnsConfig())
VALID = dns.message.make_query(
    "_sips._tcp.Cust.Teams.example.com",
    "SRV",
    use_edns=0,
    options=[dns.edns.ECSOption("198.51.100.0", 24)],
).to_wire()


def test_identical_queries_from_different_regions_get_their_own_answers() -> None:
    auth = Authority(snapshot(), DnsConfig())
    query = dns.message.make_query("_sip._udp.voip.example.com", "SRV", id=7).to_wire()

    def first_target(client: str) -> str:
        reply = dns.message.from_wire(auth.respond(query, client) or b"")
        return str(min(reply.answer[0], key=lambda rd: rd.priority).target)

    for _ in range(2):  # the second round comes from the response cache
        assert first_target("127.0.0.1") == "site-a.example.com."
        assert first_target("198.51.100.9") == "site-b.example.com."
    again = dns.message.make_query("_sip._udp.voip.example.com", "SRV", id=8).to_wire()
    assert auth.respond(again, "127.0.0.1")[:2] == b"\x00\x08"  # type: ignore[index]


def test_without_sites_sip_names_are_nodata_and_offer_no_transport() -> None:
    auth = Authority(snapshot(sites=()), DnsConfig())
    # The domain exists, with no address to give: NODATA.  No site offers any transport, so
    # its service names do not exist (as in the zone a secondary transfers): NXDOMAIN.
    for name, rdtype, rcode in [
        ("voip.example.com", "A", dns.rcode.NOERROR),
        ("voip.example.com", "NAPTR", dns.rcode.NOERROR),
        ("_sip._udp.voip.example.com", "SRV", dns.rcode.NXDOMAIN),
    ]:
        reply = dns.message.from_wire(ask(auth, name, rdtype))
        assert reply.rcode() == rcode
        assert reply.answer == []
        assert reply.authority[0].rdtype == dns.rdatatype.SOA
