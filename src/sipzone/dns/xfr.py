"""Feeding secondaries: AXFR (and IXFR answered as AXFR) responses, and NOTIFY messages.

Transfers are rare and large, so they use dnspython end to end; they read the same
:class:`~sipzone.dns.records.Records` as the live answers and the zone export, from the default
region view (a secondary cannot tell clients apart).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.renderer
import dns.rrset
import dns.serial

from sipzone.dns.records import IN, RdType, Records

MAX_MESSAGE = 65535
# dnspython's renderer has no type hints; it is the one way to fill messages up to a size.
_Renderer: Any = dns.renderer.Renderer


def allowed(client: str, cidrs: tuple[str, ...]) -> bool:
    """Whether ``client`` lies in one of the ``--allow-transfer`` networks."""
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


def transfer(
    records: Records, query: dns.message.Message, client: str, cidrs: tuple[str, ...]
) -> Iterator[bytes]:
    """The response messages to an AXFR/IXFR ``query``: the zone framed by its SOA
    (RFC 5936), or one error message.  An IXFR from a secondary already at our serial gets
    just the SOA (RFC 1995 §4); any other IXFR gets the whole zone, which RFC 1995 allows."""
    q = query.question[0]
    zone = q.name.to_text(omit_final_dot=True).lower()
    if zone not in records.snapshot.zones or not allowed(client, cidrs):
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.REFUSED)
        yield response.to_wire()
        return
    soa = records.soa(zone)
    apex = dns.name.from_text(zone)
    if q.rdtype == dns.rdatatype.IXFR:
        theirs = [
            rd.serial for rrset in query.authority for rd in rrset if rrset.rdtype == RdType.SOA
        ]
        if theirs and dns.serial.Serial(theirs[0]) >= dns.serial.Serial(records.serial):
            yield from _messages(query, [(apex, soa)])
            return
    rrsets = [*records.zone_rrsets(zone), (apex, soa)]
    yield from _messages(query, rrsets)


def _messages(
    query: dns.message.Message, rrsets: list[tuple[dns.name.Name, dns.rdataset.Rdataset]]
) -> Iterator[bytes]:
    q = query.question[0]

    def start() -> Any:
        r = _Renderer(query.id, dns.flags.QR | dns.flags.AA, MAX_MESSAGE)
        r.add_question(q.name, q.rdtype, IN)
        return r

    renderer = start()
    pending = False
    for name, rds in rrsets:
        rrset = dns.rrset.from_rdata_list(name, rds.ttl, list(rds))
        try:
            renderer.add_rrset(dns.renderer.ANSWER, rrset)
        except dns.exception.TooBig:
            renderer.write_header()
            yield renderer.get_wire()
            renderer = start()
            renderer.add_rrset(dns.renderer.ANSWER, rrset)
        pending = True
    if pending:
        renderer.write_header()
        yield renderer.get_wire()


def notify_message(zone: str, records: Records) -> dns.message.Message:
    """NOTIFY for ``zone`` (RFC 1996) carrying the current SOA as a hint."""
    msg = dns.message.make_query(zone, dns.rdatatype.SOA)
    msg.flags = dns.flags.AA  # before the opcode: dnspython keeps the opcode in the flags
    msg.set_opcode(dns.opcode.NOTIFY)
    soa = records.soa(zone)
    msg.answer.append(dns.rrset.from_rdata_list(zone + ".", soa.ttl, list(soa)))
    return msg
