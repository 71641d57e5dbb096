"""Feeding secondaries: AXFR and IXFR responses, and NOTIFY messages.

Theory of operation.  A zone of a million SIP domains is four million owner names and hundreds
of megabytes on the wire, so a transfer is a stream: :meth:`Records.zone_walk` lists the names
one by one, without sorting them or tabling them, and :func:`transfer` turns them into
response messages as the server asks for the next one (it writes one per turn of the event
loop, waiting while the secondary's socket is full).  The first message leaves at once; memory
does not depend on the zone's size; queries and SIP are answered between two messages.

The records under a name depend only on its roles (see :mod:`sipzone.dns.records`), so each
set of roles is rendered once per transfer to RR *tails* (type, class, TTL, RDATA); a name then
costs its owner's labels and a two-byte pointer per further record.  Owners are compressed
against the question (the apex, at offset 12) and against owners written earlier in the same
message, so ``_sip._udp.D`` is two labels and a pointer to ``D``; a message is closed before it
passes 16 KB so that every owner stays within reach of a 14-bit pointer.  NAPTR, which names
its domain, is spliced from the template the live answers use; names inside RDATA are never
compressed (RFC 3597 §4).  The zone comes from the default region view: a secondary cannot tell
clients apart; and from the sites as configured, whatever their health (the server hands over
the journal's records, see :mod:`sipzone.dns.ixfr`).  IXFR (RFC 1995) sends what the journal kept
of the changes since the secondary's serial, framed the same way.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.serial
from prometheus_client import Counter

from sipzone.dns.metrics import IXFRS
from sipzone.dns.protocol import AA, HEADER, OPT_PREFIX, QR, UDP_MIN
from sipzone.dns.records import IN, SERVICES, RdType, Records, Role
from sipzone.eventlog import EventLog
from sipzone.model.names import MAX_NAME

if TYPE_CHECKING:
    from sipzone.dns.ixfr import Journal, Step

log = logging.getLogger("sipzone.dns")
_events = EventLog(log)

OMITTED = Counter(
    "sipzone_dns_omitted_records",
    "Records left out of zone transfers and exports because a name sipzone would write "
    "(an owner such as _sips._tcp.D, or a NAPTR replacement) exceeds 255 octets",
)

# Close a message before it passes this size: every owner then sits below offset 0x4000,
# where a compression pointer can reach it.  Bigger messages (up to 64 KB) would save a few
# headers per megabyte and lose the pointers to owners written after 16 KB.
MESSAGE_TARGET = 0x3FFF
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_POINTER = struct.Struct("!H")
_QNAME = HEADER  # offset of the question name: the apex
_FLAGS = (QR | AA) << 8  # opcode QUERY, NOERROR


def allowed(client: str, cidrs: tuple[str, ...]) -> bool:
    """Whether ``client`` lies in one of the ``--allow-transfer`` networks."""
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


class Omissions:
    """Names of one listing of ``zone`` that cannot be written because they exceed 255 octets
    (a store filled before names were checked for room under ``_sips._tcp.`` can hold such
    domains): each is counted, the first logged, then one line a minute per zone."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.count = 0

    def __call__(self, name: str) -> None:
        self.count += 1
        OMITTED.inc()
        _events.warning(
            "too long in " + self.zone,
            "zone %s: left out the records of %s, longer than 255 octets on the wire",
            self.zone,
            name,
        )

    def fits(self, name: str) -> bool:
        """Whether text name ``name`` fits in 255 wire octets; if not, it is counted here."""
        if len(name) <= MAX_NAME:
            return True
        self(name)
        return False


def transfer(
    records: Records,
    query: dns.message.Message,
    client: str,
    cidrs: tuple[str, ...],
    journal: Journal | None = None,
    udp: int | None = None,
) -> Iterator[bytes]:
    """The response messages to an AXFR/IXFR ``query``: the zone framed by its SOA
    (RFC 5936), or one error message.  An IXFR from a secondary already at our serial gets
    just the SOA (RFC 1995 §4); one whose serial ``journal`` holds the changes since gets those
    (RFC 1995 §4); any other the whole zone, which RFC 1995 allows.  Over UDP (``udp``: the
    size the client takes) the whole zone is never sent: the SOA alone tells the secondary to
    ask over TCP (RFC 1995 §2), as it does for changes that surely do not fit."""
    q = query.question[0]
    zone = q.name.to_text(omit_final_dot=True).lower()
    if zone not in records.snapshot.zones or not allowed(client, cidrs):
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.REFUSED)
        yield response.to_wire()
        return
    serial = records.serial(zone)
    soa = rrs_of([records.soa(zone)])
    qname = q.name.to_wire()
    assert qname is not None  # to_wire() without a file returns the bytes
    out = _Messages(query.id, qname + struct.pack("!HH", q.rdtype, q.rdclass), zone)
    kind, messages = "AXFR", None
    if q.rdtype == dns.rdatatype.IXFR:
        theirs = ixfr_serial(query)
        current = theirs is not None and dns.serial.Serial(theirs) >= dns.serial.Serial(serial)
        steps = None
        if journal is not None and theirs is not None and not current:
            steps = journal.steps(zone, theirs)
        # Over UDP: one datagram or none; each RR costs 12 octets at least (an owner pointer,
        # type, class, TTL, length), so changes that surely do not fit are not rendered.
        if udp is not None and steps is not None and 12 * sum(s.size for s in steps) <= udp:
            [*incremental] = _incremental(zone, soa, steps, out)
            if len(incremental) == 1 and len(incremental[0]) <= udp:
                IXFRS.labels("incremental").inc()
                yield incremental[0]
                return
        if current or udp is not None:
            IXFRS.labels("current").inc()
            out.add(zone, soa)
            yield out.finish()
            return
        IXFRS.labels("zone" if steps is None else "incremental").inc()
        if steps is not None:
            kind, messages = f"IXFR from serial {theirs}", _incremental(zone, soa, steps, out)
    started = time.monotonic()
    sent = 0
    for message in messages or _zone(records, zone, soa, out):
        sent += len(message)
        yield message
    log.info(
        "%s of %s serial %d to %s: %d messages, %d bytes, %.1f s",
        kind,
        zone,
        serial,
        client,
        out.messages,
        sent,
        time.monotonic() - started,
    )


def udp_ixfr(
    records: Records,
    data: bytes,
    client: str,
    cidrs: tuple[str, ...],
    journal: Journal,
    payload: int,
) -> bytes | None:
    """The response to an IXFR query over UDP (RFC 1995 §2), question included: the changes
    when they fit in one datagram the client takes, else the SOA alone.  None when ``data``
    is not an IXFR query (the caller's error answer stands)."""
    try:
        query = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None
    if (
        query.opcode() != dns.opcode.QUERY
        or len(query.question) != 1
        or query.question[0].rdtype != dns.rdatatype.IXFR
    ):
        return None
    opt = b""
    limit = UDP_MIN
    if query.edns >= 0:
        opt = OPT_PREFIX + struct.pack("!HHHH", payload, 0, 0, 0)
        limit = max(UDP_MIN, min(query.payload, payload))
    [message] = transfer(records, query, client, cidrs, journal, udp=limit - len(opt))
    counts = _HEADER.unpack_from(message)
    if not opt or counts[5]:  # a refusal made by dnspython carries its OPT already
        return message
    return _HEADER.pack(*counts[:5], 1) + message[HEADER:] + opt


def ixfr_serial(query: dns.message.Message) -> int | None:
    """The serial of the SOA an IXFR query carries (the secondary's version), if any."""
    for rrset in query.authority:
        if rrset.rdtype == RdType.SOA:
            for rd in rrset:
                return int(rd.serial)
    return None


class Tails:
    """The RR tails (type, class, TTL, RDATA) under the names of one zone, each set of roles
    rendered once: the walk shares one roles tuple between all names with the same roles, so
    they are keyed by id(); the tuple kept in the value keeps its id from being reused."""

    def __init__(self, records: Records, zone: str, omitted: Omissions) -> None:
        self.records = records
        self.zone = zone
        self.omitted = omitted
        self._by_roles: dict[int, tuple[tuple[Role, ...], list[bytes]]] = {}
        # NAPTR rendered for the root: drop the root's zero byte, append the domain's name.
        self._naptr: list[tuple[bytes, bytes, str]] = []
        if records.config.naptr:
            rds = records.naptr("")
            head = _RR.pack(RdType.NAPTR, IN, rds.ttl, 0)[:-2]
            self._naptr = [(head, rd.to_wire()[:-1], rd.replacement.to_text()) for rd in rds]
        # Any NAPTR base this long or shorter fits under every replacement.
        self._room = MAX_NAME - max((len(r) for _, _, r in self._naptr), default=0)
        self._apex = _labels(zone) + b"\x00"
        self._cut = len(zone) + 1

    def of(self, name: str, roles: tuple[Role, ...], naptr_base: str | None) -> list[bytes]:
        """The RRs of owner ``name`` with ``roles`` (SOA excepted: it frames a transfer)."""
        hit = self._by_roles.get(id(roles))
        if hit is None:
            rdatasets = self.records.rdatasets(self.zone, roles, 0)
            hit = self._by_roles[id(roles)] = (
                roles,
                rrs_of(r for t, r in rdatasets.items() if t != RdType.SOA),
            )
        rrs = hit[1]
        if naptr_base is not None and self._naptr:
            zone = self.zone
            base = (
                _labels(naptr_base[: -self._cut]) + self._apex if naptr_base != zone else self._apex
            )
            rrs = rrs + [
                head + _POINTER.pack(len(rdata) + len(base)) + rdata + base
                for head, rdata, replacement in self._naptr
                if len(naptr_base) <= self._room or self.omitted.fits(replacement + naptr_base)
            ]
        return rrs

    def owner(self, name: str) -> list[bytes]:
        """The RRs a transfer lists under ``name`` (none when it has no records there)."""
        found = self.records.zone_owner(name) if len(name) <= MAX_NAME else None
        return [] if found is None else self.of(name, *found)


def _zone(records: Records, zone: str, soa: list[bytes], out: _Messages) -> Iterator[bytes]:
    """The whole zone through ``out``: SOA, every other record once, SOA again."""
    omitted = Omissions(zone)
    tails = Tails(records, zone, omitted)
    out.add(zone, soa)
    for name, roles, naptr_base in records.zone_walk(zone, omitted):
        rrs = tails.of(name, roles, naptr_base)
        if rrs:
            done = out.add(name, rrs)
            if done is not None:
                yield done
    done = out.add(zone, soa)
    if done is not None:
        yield done
    yield out.finish()


def _incremental(
    zone: str, soa: list[bytes], steps: Sequence[Step], out: _Messages
) -> Iterator[bytes]:
    """An IXFR response through ``out`` (RFC 1995 §4): the current SOA, then per step the old
    SOA and the records deleted, the new SOA and the records added, then the current SOA."""
    blocks: list[tuple[str, Sequence[bytes]]] = [(zone, soa)]
    for step in steps:
        blocks += [(zone, [step.soa_before]), *step.deleted, (zone, [step.soa_after]), *step.added]
    blocks.append((zone, soa))
    for name, rrs in blocks:
        done = out.add(name, rrs)
        if done is not None:
            yield done
    yield out.finish()


def rrs_of(rdatasets: Iterable[dns.rdataset.Rdataset]) -> list[bytes]:
    """Wire RRs without their owner (type, class, TTL, RDATA)."""
    return [
        _RR.pack(rds.rdtype, IN, rds.ttl, len(rdata)) + rdata
        for rds in rdatasets
        for rdata in (rd.to_wire() for rd in rds)
    ]


# "_sips._tcp" and friends: the labels before a SIP domain's service names.
_SERVICE_LABELS = {
    f"{first}.{second}": (chr(len(first)) + first + chr(len(second)) + second).encode("latin-1")
    for first, second, _, _ in SERVICES
}


def _labels(name: str) -> bytes:
    """Wire labels of a non-empty text name (ours are ASCII), without the root."""
    if "." not in name:  # the usual owner below the apex: one label
        return (chr(len(name)) + name).encode("latin-1")
    known = _SERVICE_LABELS.get(name)
    if known is not None:
        return known
    return "".join(chr(len(label)) + label for label in name.split(".")).encode("latin-1")


class _Messages:
    """Response messages being filled, one at a time, with owners and their RR tails."""

    def __init__(self, query_id: int, question: bytes, zone: str) -> None:
        self._id = query_id
        self._question = question
        self._zone = zone
        self.messages = 0
        self._start()

    def _start(self) -> None:
        self._parts: list[bytes] = []
        self._size = 12 + len(self._question)
        self._count = 0
        self._offsets: dict[str, int] = {}  # owners written in this message

    def add(self, name: str, rrs: Sequence[bytes]) -> bytes | None:
        """Append ``rrs`` under owner ``name`` (in the zone); returns the message this closed
        when there was no room left, else None."""
        block = self._block(name, rrs)
        done = None
        if self._count and self._size + len(block) > MESSAGE_TARGET:
            done = self.finish()
            block = self._block(name, rrs)  # offsets differ in the new message
        self._parts.append(block)
        self._size += len(block)
        self._count += len(rrs)
        return done

    def finish(self) -> bytes:
        """The message filled so far; the next :meth:`add` starts another."""
        header = _HEADER.pack(self._id, _FLAGS, 1, self._count, 0, 0)
        message = b"".join([header, self._question, *self._parts])
        self.messages += 1
        self._start()
        return message

    def _block(self, name: str, rrs: Sequence[bytes]) -> bytes:
        """Owner, first RR, then a pointer to the owner before each further RR."""
        if name == self._zone:
            pointer = _POINTER.pack(0xC000 | _QNAME)
            return pointer + pointer.join(rrs)
        # Labels up to the nearest suffix already written (else the apex), then a pointer.
        offsets = self._offsets
        rest = name
        target = _QNAME
        while True:
            dot = rest.find(".")
            if dot < 0:
                raise ValueError(f"{name!r} is not in zone {self._zone!r}")
            rest = rest[dot + 1 :]
            if rest == self._zone:
                break
            hit = offsets.get(rest)
            if hit is not None:
                target = hit
                break
        owner = _labels(name[: len(name) - len(rest) - 1]) + _POINTER.pack(0xC000 | target)
        at = self._size
        if at < 0x4000:
            offsets[name] = at
            pointer = _POINTER.pack(0xC000 | at)
        else:  # only a record set bigger than a message gets here: repeat the owner
            pointer = owner
        return owner + pointer.join(rrs)


def notify_message(zone: str, records: Records) -> dns.message.Message:
    """NOTIFY for ``zone`` (RFC 1996) carrying the current SOA as a hint."""
    msg = dns.message.make_query(zone, dns.rdatatype.SOA)
    msg.flags = dns.flags.AA  # before the opcode: dnspython keeps the opcode in the flags
    msg.set_opcode(dns.opcode.NOTIFY)
    soa = records.soa(zone)
    msg.answer.append(dns.rrset.from_rdata_list(zone + ".", soa.ttl, list(soa)))
    return msg
