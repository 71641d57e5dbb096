"""Precompiled wire answers and the sans-IO responder: query bytes in, response bytes out.

Theory of operation.  A response is ``ID + header + question + body + OPT``.  Every record we
publish for a name sits under the question name (a compression pointer to offset 12), so a
*body* depends on (zone, roles, region view, type) and not on the name: one compiled body
serves a million SIP domains and every name a wildcard covers.  NAPTR, whose replacement names
the domain, is spliced from a template instead.  A first question classifies its name once
(zone, roles, empty non-terminal or NXDOMAIN, through the one matcher the SIP edge uses) in a
few microseconds and caches the answer under the question bytes as they came, plus the view.
Above that sits a cache of whole UDP responses keyed by the query bytes after the ID (a UDP
response is a function of those bytes and the client's view), so a query seen before costs
one slice, one dictionary probe and one concatenation.  The question is always echoed exactly
as asked, case included.  dnspython renders record sets into bodies; it never runs per query.

Changes.  A snapshot that only adds or removes rules (it carries a ``Delta``) touches just those
names: their cache entries, their ancestors' (an empty non-terminal may appear or vanish) and,
for a wildcard, the names under its base; the SOA serial is patched in place in the few bodies
that carry it; whole cached responses are simply dropped.  Any other change builds new
:class:`Tables` (the only per-rule work is counting ancestors for empty non-terminals), on a
thread when the store is big.

Failures.  A value that cannot be rendered is left out of its record set (records.py); a zone
whose SOA cannot be rendered is left out, the other zones answer.  Any failure while answering
one question costs that question a SERVFAIL (remembered with the tables, so a repeat costs no
more than a hit) and one rate-limited log line, never the server or the other names.

Size.  A response too big for the client's payload first loses whole record sets from the end
of its additional section; only when the answer and authority sections alone do not fit is it
sent truncated (TC) and empty, so the client retries over TCP (RFC 2181 §9).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import struct
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import dns.name
import dns.rdataset
import dns.rdatatype

from sipzone.dns import DnsConfig
from sipzone.dns.debug import DnsTrace
from sipzone.dns.protocol import (
    AA,
    BADVERS,
    CLASS_IN,
    COMPRESSED,
    DO,
    DO_BYTE,
    ECHOED,
    ECS_ADDRESS,
    ECS_FAMILIES,
    ECS_FAMILY,
    ECS_SCOPE,
    ECS_SOURCE,
    FORMERR,
    HEADER,
    MAX_LABEL,
    MAX_WIRE_NAME,
    META_QTYPES,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    ONE_QUESTION,
    ONE_QUESTION_OPT,
    OPCODE,
    OPT_FLAGS,
    OPT_OPTIONS,
    OPT_PAYLOAD,
    OPT_PREFIX,
    OPT_RDLENGTH,
    OPT_VERSION,
    OPTION_ECS,
    OPTION_HEADER,
    QNAME_POINTER,
    QR,
    QTYPE_ANY,
    RCODE,
    RD,
    REFUSED,
    SERVFAIL,
    TC,
    TCP_MAX,
    UDP_MIN,
    name_end,
)
from sipzone.dns.records import (
    DOMAIN,
    PROTOCOL_LABELS,
    SERVICE_PREFIXES,
    RdType,
    Records,
    Role,
)
from sipzone.eventlog import EventLog
from sipzone.model.debug import without_switches
from sipzone.model.names import lookup_key
from sipzone.model.snapshot import IPNetwork, Snapshot

FORGET_ONE_BY_ONE = 256  # rules per change above which the question cache is dropped whole
RESPONSE_CACHE = 65_536  # whole responses kept per view: the hot set, not every name

_RR_HEADER = struct.Struct("!HHIH")
_NAME_TEXT = re.compile(rb"[a-z0-9_*.-]+")
_VIEW_BYTES = [bytes((i,)) for i in range(256)]
EDNS = 2  # in an answer's form: the query had an OPT record (see Answer.heads)

log = logging.getLogger("sipzone.dns")
events = EventLog(log)


class _Traceback:
    """A traceback formatted only if the line carrying it is written (EventLog may hide it)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __str__(self) -> str:
        return "".join(traceback.format_exception(self.exc)).rstrip()


def log_bug(what: str, exc: BaseException) -> None:
    """Log a failure of ours (a traceback), once per place it happened and minute."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    events.error(
        f"bug {what} {type(exc).__name__} {where}", "%s failed:\n%s", what, _Traceback(exc)
    )


# A responder: query bytes and the client's address (text or packed) in, response out or None.
Respond = Callable[[bytes, str | bytes], bytes | None]


class Answer:
    """One compiled response minus ID, question and OPT.

    ``heads[i]`` are the 10 header bytes after the ID, indexed by ``rd | edns << 1 | tc << 2``
    (RD is copied from the query; with EDNS the additional count includes our OPT; the
    truncated form carries no records).  ``serial_at`` lists where an SOA serial sits in
    ``body`` so a new revision can be patched in without recompiling.  ``cuts`` are the
    shorter forms for a small payload, longest first: (body length, additional count) after
    dropping whole record sets from the end of the additional section, down to none.

    The body follows a question whose length varies (one body serves every name of a zone
    with the same roles), so its compression pointers are stored as ``relocs``: (offset in the
    body, target relative to the body's start); :meth:`body_after` aims them for a question
    length, once per length.
    """

    __slots__ = ("_aimed", "body", "cuts", "heads", "regional", "relocs", "serial_at")

    def __init__(
        self,
        rcode: int,
        body: bytes = b"",
        counts: tuple[int, int, int] = (0, 0, 0),
        *,
        regional: bool = False,
        authoritative: bool = True,
        serial_at: tuple[int, ...] = (),
        cuts: tuple[tuple[int, int], ...] = (),
        relocs: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self.body = body
        self.regional = regional
        self.serial_at = serial_at
        self.cuts = cuts
        self.relocs = relocs
        self._aimed: dict[int, bytes] = {}
        heads = []
        for i in range(8):
            rd, edns, tc = i & RD, (i >> 1) & 1, (i >> 2) & 1
            flags = QR | (AA if authoritative else 0) | (TC if tc else 0) | rd
            an, ns, ar = (0, 0, 0) if tc else counts
            heads.append(bytes((flags, rcode)) + struct.pack("!HHHH", 1, an, ns, ar + edns))
        self.heads: tuple[bytes, ...] = tuple(heads)

    def set_serial(self, serial: int) -> None:
        packed = serial.to_bytes(4, "big")
        body = bytearray(self.body)
        for at in self.serial_at:
            body[at : at + 4] = packed
        self.body = bytes(body)
        self._aimed = {}

    def body_after(self, question: int) -> bytes:
        """The body as it follows a question (name, type, class) of ``question`` octets."""
        if not self.relocs:
            return self.body
        body = self._aimed.get(question)
        if body is None:
            aimed = bytearray(self.body)
            start = HEADER + question
            for at, target in self.relocs:
                aimed[at : at + 2] = (COMPRESSED | (start + target)).to_bytes(2, "big")
            body = self._aimed[question] = bytes(aimed)
        return body

    def fit(self, head: bytes, question: bytes, opt: bytes, limit: int, form: int) -> bytes:
        """The response (ID ``head``) in at most ``limit`` octets: whole additional record
        sets dropped from the end until it fits, else truncated (TC, no records)."""
        room = limit - 12 - len(question) - len(opt)
        for length, additional in self.cuts:
            if length <= room:
                counts = self.heads[form]
                ar = (additional + (form >> 1 & 1)).to_bytes(2, "big")
                body = self.body_after(len(question))
                return head + counts[:8] + ar + question + body[:length] + opt
        return head + self.heads[4 | form] + question + opt


@dataclass(frozen=True, slots=True)
class Section:
    """Record sets for one section: ``owner`` is wire bytes, or None for the question name."""

    rrsets: Sequence[tuple[bytes | None, dns.rdataset.Rdataset]]


# The names in the RDATA of the types we publish with names: (offset of the first name, how
# many follow it back to back, whether they may be compressed: RFC 3597 §4 allows it for the
# types of RFC 1035 and forbids it for later ones such as SRV).
_RDATA_NAMES = {
    RdType.NS: (0, 1, True),
    RdType.MX: (2, 1, True),
    RdType.SOA: (0, 2, True),
    RdType.SRV: (6, 1, False),
}
# The farthest a compression pointer may reach (14 bits), less the longest question before
# the body: names past it in the body are not pointed at.
_POINTABLE = 0x3FFF - HEADER - MAX_WIRE_NAME - 4


def render(
    rcode: int,
    answer: Section,
    authority: Section = Section(()),
    additional: Section = Section(()),
    *,
    zone: bytes = b"",
    regional: bool = False,
) -> Answer:
    """Render record sets to an :class:`Answer` for questions ending in ``zone`` (wire).

    Owners and the names in NS, MX and SOA records are compressed (RFC 1035 §4.1.4) onto the
    question's zone and onto names earlier in the body (SRV targets included), so a glue
    owner costs two octets; SRV and NAPTR names stay uncompressed, as RFC 3597 asks."""
    parts: list[bytes] = []
    serial_at: list[int] = []
    relocs: list[tuple[int, int]] = []
    # Lower-case wire name -> where it is, relative to the body's start: the question's zone
    # sits just before the question's type and class, the rest in the body.
    known = {zone[i:]: i - len(zone) - 4 for i in _label_starts(zone)}

    def note(name: bytes, at: int, labels_end: int = MAX_WIRE_NAME) -> None:
        """Remember the suffixes of ``name``, written at ``at`` up to ``labels_end``."""
        for i in _label_starts(name):
            if i >= labels_end or at + i > _POINTABLE:
                return
            known.setdefault(name[i:].lower(), at + i)

    def compressed(name: bytes, at: int) -> bytes:
        for i in _label_starts(name):
            target = known.get(name[i:].lower())
            if target is not None:
                relocs.append((at + i, target))
                note(name, at, i)
                return name[:i] + QNAME_POINTER  # aimed by Answer.body_after
        note(name, at)
        return name

    size = 0
    counts = []
    cuts: list[tuple[int, int]] = []  # (size, additional count) before each additional set
    for section in (answer, authority, additional):
        count = 0
        for owner, rds in section.rrsets:
            if section is additional:
                cuts.append((size, count))
            for rd in rds:
                name = QNAME_POINTER if owner is None else compressed(owner, size)
                at = size + len(name) + _RR_HEADER.size  # where the RDATA starts
                raw = rd.to_wire()
                i, many, compress = _RDATA_NAMES.get(rds.rdtype, (0, 0, False))
                rdata = raw[:i]
                for _ in range(many):
                    end = name_end(raw, i)
                    if compress:
                        rdata += compressed(raw[i:end], at + len(rdata))
                    else:
                        note(raw[i:end], at + len(rdata))
                        rdata += raw[i:end]
                    i = end
                if rds.rdtype == RdType.SOA:
                    serial_at.append(at + len(rdata))
                rdata += raw[i:]
                head = name + _RR_HEADER.pack(rds.rdtype, rds.rdclass, rds.ttl, len(rdata))
                parts += (head, rdata)
                size = at + len(rdata)
                count += 1
        counts.append(count)
    return Answer(
        rcode,
        b"".join(parts),
        (counts[0], counts[1], counts[2]),
        regional=regional,
        serial_at=tuple(serial_at),
        cuts=tuple(reversed(cuts)),
        relocs=tuple(relocs),
    )


def _label_starts(name: bytes) -> Iterator[int]:
    """Offsets of the labels of an uncompressed wire name, the root's zero byte excluded."""
    i = 0
    while i < len(name) and name[i]:
        yield i
        i += name[i] + 1


def wire(name: str) -> bytes:
    """Lower-case wire form of a text name without trailing dot (names we store are ASCII)."""
    if not name.isascii():
        return dns.name.from_text(name).to_wire().lower()  # type: ignore[union-attr]
    out = bytearray()
    for label in name.lower().encode().split(b".") if name else ():
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)


def ancestors(name: str) -> Iterator[str]:
    """Proper ancestors of a text name, nearest first (``*.b.c`` gives ``b.c``, ``c``)."""
    dot = name.find(".")
    while dot >= 0:
        yield name[dot + 1 :]
        dot = name.find(".", dot + 1)


def name_text(q: bytes) -> str | None:
    """Text of a lower-case wire name, or None when a label holds bytes no rule or zone of
    ours can contain (a dot inside a label, spaces, binary)."""
    labels = []
    i = 0
    while q[i]:
        end = i + 1 + q[i]
        labels.append(q[i + 1 : end])
        i = end
    text = b".".join(labels)
    if not labels:
        return ""
    if not _NAME_TEXT.fullmatch(text) or text.count(b".") != len(labels) - 1:
        return None
    return text.decode("ascii")


def is_below_wire(q: bytes, base: bytes) -> bool:
    """True when wire name ``q`` is a proper subdomain of wire name ``base``."""
    cut = len(q) - len(base)
    if cut <= 0 or not q.endswith(base):
        return False
    i = 0
    while i < cut:
        i += q[i] + 1
    return i == cut


class RegionMap:
    """Longest-prefix match of a client address over the sites' networks to a view index."""

    def __init__(self, networks: Iterable[tuple[IPNetwork, int]]) -> None:
        by_len: dict[tuple[int, int], dict[int, int]] = {}
        for net, view in networks:
            by_len.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = view
        # Per IP version, longest prefix first: (prefix length, mask, network -> view).
        self._tables: dict[int, list[tuple[int, int, dict[int, int]]]] = {4: [], 6: []}
        for (version, plen), table in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            mask = ((1 << plen) - 1) << (bits - plen)
            self._tables[version].append((plen, mask, table))
        # (version, network length, subnet length) -> the networks' first subnet-length bits.
        self._heads: dict[tuple[int, int, int], frozenset[int]] = {}
        self.clients: dict[str | bytes, int] = {}  # source address -> view, filled lazily

    def view(self, version: int, address: int) -> int:
        for _, mask, table in self._tables[version]:
            hit = table.get(address & mask)
            if hit is not None:
                return hit
        return 0

    def subnet_view(self, version: int, address: int, source: int) -> tuple[int, int]:
        """(view, ECS scope) for the client subnet ``address``/``source`` (RFC 7871).

        A resolver caches what we answer for its whole subnet (§7.3.1), so the subnet picks a
        region only when every address in it falls in the same one.  When a site network
        longer than the subnet lies inside it (``/16`` asked, a ``/24`` site in it), the
        subnet cannot tell: the default view, which is right for everyone in it, with the
        scope set to that network's length, so a resolver willing to send more bits asks
        again with them (§7.2.1: a scope longer than the source means "not specific enough").
        """
        bits = 32 if version == 4 else 128
        head = address >> (bits - source)
        for plen, _, table in self._tables[version]:
            if plen <= source:
                break
            key = (version, plen, source)
            heads = self._heads.get(key)
            if heads is None:
                heads = self._heads[key] = frozenset(n >> (bits - source) for n in table)
            if head in heads:
                return 0, plen
        return self.view(version, address), source

    def view_of(self, client: str | bytes) -> int:
        """View of a source address, as text or packed bytes (4 or 16); cached per address."""
        hit = self.clients.get(client)
        if hit is not None:
            return hit
        try:
            ip = ipaddress.ip_address(
                client if isinstance(client, bytes) else client.split("%", 1)[0]
            )
        except ValueError:
            return 0
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        view = self.view(ip.version, int(ip))
        if len(self.clients) > 100_000:
            self.clients.clear()
        self.clients[client] = view
        return view


@dataclass(slots=True)
class ZoneAnswers:
    """A zone's two negative answers, each carrying its SOA."""

    apex: str
    nodata: Answer
    nxdomain: Answer


def count_ancestors(ents: dict[str, int], name: str, step: int) -> None:
    """Count ``name`` in (step 1) or out (step -1) of its ancestors' empty non-terminal counts."""
    for parent in ancestors(name):
        count = ents.get(parent, 0) + step
        if count > 0:
            ents[parent] = count
        else:
            ents.pop(parent, None)


def follows(old: Snapshot, new: Snapshot) -> bool:
    """Whether ``new`` is ``old`` with only rules changed, as its delta lists them."""
    return (
        new.delta is not None
        and new.sites == old.sites
        and new.zones == old.zones
        and new.email_domain == old.email_domain
        and without_switches(new.settings) == without_switches(old.settings)
        and new.challenges == old.challenges
    )


@dataclass(slots=True)
class Tables:
    """What a snapshot determines before any query arrives.  Building it touches every rule
    once (empty non-terminal counts), so for a big store the server builds it on a thread
    while the old tables keep answering."""

    snapshot: Snapshot
    records: Records
    regions: RegionMap
    zones_wire: dict[bytes, str]
    zones: dict[str, ZoneAnswers]
    ents: dict[str, int]
    soa_answers: dict[str, list[Answer]]  # per zone, bodies carrying its SOA serial (patched)

    @classmethod
    def build(cls, snapshot: Snapshot, config: DnsConfig) -> Tables:
        records = Records(snapshot, config)
        soa_answers: dict[str, list[Answer]] = {}
        zones = {}
        negative_ttl = min(config.ttl, config.negative_ttl)  # RFC 2308 §3 and §5
        for zone in snapshot.zones:
            try:
                soa = Section([(wire(zone), records.soa(zone, negative_ttl))])
            except Exception as exc:  # one bad zone must not take the others
                events.error(
                    f"zone {zone}", "zone %s has no SOA we can render (%s); not served", zone, exc
                )
                continue
            nodata = render(NOERROR, Section(()), soa, zone=wire(zone))
            nxdomain = render(NXDOMAIN, Section(()), soa, zone=wire(zone))
            soa_answers[zone] = [nodata, nxdomain]
            zones[zone] = ZoneAnswers(zone, nodata, nxdomain)
        ents: dict[str, int] = {}
        for name in records.static:
            count_ancestors(ents, name, 1)
        for rule, _ in snapshot.matcher.rules():
            count_ancestors(ents, rule, 1)
        return cls(
            snapshot,
            records,
            RegionMap(records.networks()),
            {wire(z): z for z in zones},
            zones,
            ents,
            soa_answers,
        )


class Authority:
    """The live answer table for one snapshot at a time, and the responder over it."""

    def __init__(self, snapshot: Snapshot, config: DnsConfig) -> None:
        self.config = config
        self._refused = Answer(REFUSED, authoritative=False)
        self._notimp = Answer(NOTIMP, authoritative=False)
        self._servfail = Answer(SERVFAIL, authoritative=False)
        self._opt_plain = (self._opt(0, b""), self._opt(DO, b""))
        # The DNS debug switch's lines while one is on (`sipzone debug dns`): checked first.
        self.trace: DnsTrace | None = None
        # Set by the server: the answer to a query that is not a plain question (parse_query
        # refuses it) but may be an IXFR over UDP, which carries the secondary's SOA.
        self.udp_ixfr: Respond | None = None
        self.rebuild(snapshot)

    # -- building -----------------------------------------------------------------------------

    def rebuild(self, snapshot: Snapshot) -> None:
        """Throw everything away and start from ``snapshot``."""
        self.install(Tables.build(snapshot, self.config))

    def install(self, tables: Tables) -> None:
        """Switch to tables built (maybe on another thread) by :meth:`Tables.build`."""
        self.snapshot = tables.snapshot
        self.trace = DnsTrace.follow(self.trace, tables.snapshot.settings)
        self.records = tables.records
        self.regions = tables.regions
        self._client_views = tables.regions.clients
        self._zones_wire = tables.zones_wire
        self._zones = tables.zones
        self._ents = tables.ents
        self._soa_answers = tables.soa_answers
        self._nodes: dict[tuple[str, tuple[Role, ...], int], dict[int, Answer]] = {}
        self._naptr_template: tuple[int, list[tuple[bytes, int]]] | None = None
        # Question bytes as received (case kept) + view byte -> answer; and, to forget a
        # name's entries in every case and view, lower-case wire name -> its keys.
        self._cache: dict[bytes, Answer] = {}
        self._cached: dict[bytes, list[bytes]] = {}
        # Per client view: query bytes after the ID -> response bytes after the ID.  Whole
        # responses carry the serial, so this level is dropped on every change and refills
        # from the level above in a microsecond per query.
        self._responses: list[dict[bytes, bytes]] = [{} for _ in tables.records.regions]

    def update(self, snapshot: Snapshot) -> None:
        """Move to ``snapshot``, touching only what its delta names when it has one."""
        old = self.snapshot
        delta = snapshot.delta
        if delta is None or not follows(old, snapshot):
            self.rebuild(snapshot)
            return
        self.records = Records(snapshot, self.config)
        self.snapshot = snapshot
        self.trace = DnsTrace.follow(self.trace, snapshot.settings)
        for responses in self._responses:
            responses.clear()
        for zone, answers in self._soa_answers.items():
            serial = self.records.serial(zone)
            for answer in answers:
                answer.set_serial(serial)
        # A bulk import changes thousands of names at once: dropping the per-question cache is
        # then cheaper than forgetting name by name, and it refills in microseconds a question.
        bulk = len(delta.added) + len(delta.removed) > FORGET_ONE_BY_ONE
        if bulk:
            self._cache.clear()
            self._cached.clear()
        for rule in delta.removed:
            if rule in old.matcher and rule not in snapshot.matcher:
                count_ancestors(self._ents, rule, -1)
                if not bulk:
                    self._forget(rule)
        for rule in delta.added:
            if rule not in old.matcher and rule in snapshot.matcher:
                count_ancestors(self._ents, rule, 1)
                if not bulk:
                    self._forget(rule)

    def _forget(self, rule: str) -> None:
        """Drop cached answers a rule can change: the name, its service names, its ancestors
        and, for a wildcard, every name under its base."""
        if rule.startswith("*."):
            base = wire(rule[2:])
            for q in [q for q in self._cached if is_below_wire(q, base)]:
                self._forget_wire(q)
            names = [rule[2:]]
        else:
            names = [rule, *(f"{a}.{b}.{rule}" for a, b in SERVICE_PREFIXES)]
            names += [f"{p}.{rule}" for p in PROTOCOL_LABELS]
        names += ancestors(names[0])
        for name in names:
            self._forget_wire(wire(name))

    def _forget_wire(self, q: bytes) -> None:
        cache = self._cache
        for key in self._cached.pop(q, ()):
            cache.pop(key, None)

    def _node(self, zone: str, roles: tuple[Role, ...], view: int) -> dict[int, Answer]:
        """Answers per type for a name with ``roles`` (compiled once, shared by every name)."""
        key = (zone, roles, view)
        node = self._nodes.get(key)
        if node is not None:
            return node
        records = self.records
        regional = records.is_regional(roles)
        if not regional and view:
            # The same answers in every view: compile them once, under the default view.
            node = self._node(zone, roles, 0)
            self._nodes[key] = node
            return node
        node = {}
        for rdtype, rds in records.rdatasets(zone, roles, view).items():
            glue = [
                (wire(name), addrs)
                for name, found in records.glue(zone, rds)
                for addrs in found.values()
            ]
            answer = render(
                NOERROR,
                Section([(None, rds)]),
                additional=Section(glue),
                zone=wire(zone),
                regional=regional and rdtype == RdType.SRV,
            )
            if answer.serial_at:
                self._soa_answers.setdefault(zone, []).append(answer)
            node[int(rdtype)] = answer
        self._nodes[key] = node
        return node

    # -- classification -----------------------------------------------------------------------

    def _is_sip_domain(self, name: str) -> bool:
        matcher = self.snapshot.matcher
        return matcher.owner(name) is not None or matcher.wildcard_owner(name) is not None

    def roles(self, name: str) -> tuple[Role, ...] | None:
        """Roles of a lower-case text name in one of our zones: a tuple (empty for an empty
        non-terminal), or None when the name does not exist."""
        static = self.records.static.get(name, ())
        parts = name.split(".", 2)
        if len(parts) == 3:
            service = SERVICE_PREFIXES.get((parts[0], parts[1]))
            # `_sip._udp.D` of a SIP domain D, or of a wildcard base (zone files list the
            # wildcard's service names there), for the transports some site offers; `_udp.D`
            # is then an empty non-terminal.
            if (
                service is not None
                and service in self.records.offered
                and self._is_sip_domain(parts[2])
            ):
                return (*static, Role("service", service))
        if len(parts) >= 2 and parts[0] in self.records.protocols:
            rest = name.partition(".")[2]
            if self._is_sip_domain(rest):
                return static
        if self.snapshot.matcher.owner(lookup_key(name)) is not None:
            return (*static, DOMAIN)
        if static:
            return static
        if name in self._ents:
            return ()
        return None

    def zone_of_wire(self, q: bytes) -> str | None:
        zones = self._zones_wire
        i = 0
        while True:
            zone = zones.get(q[i:])
            if zone is not None or not q[i]:
                return zone
            i += q[i] + 1

    def resolve(self, q: bytes, qtype: int, qclass: int, view: int) -> Answer:
        """The answer for lower-case wire name ``q``; the slow path behind the cache."""
        if qclass != CLASS_IN:
            return self._refused
        zone = self.zone_of_wire(q)
        if zone is None:
            return self._refused
        if qtype in META_QTYPES:
            return self._notimp
        negatives = self._zones[zone]
        text = name_text(q)
        roles = self.roles(text) if text is not None else None
        if roles is None:
            return negatives.nxdomain
        node = self._node(zone, roles, view)
        if qtype == QTYPE_ANY:
            # RFC 8482: one record set is enough, and cheap to give.
            return next(iter(node.values()), negatives.nodata)
        answer = node.get(qtype)
        if answer is not None:
            return answer
        if qtype == RdType.NAPTR and DOMAIN in roles and self.config.naptr:
            return self._naptr(q) or negatives.nodata
        return negatives.nodata

    def _naptr(self, q: bytes) -> Answer | None:
        """NAPTR for SIP domain ``q`` (wire): the one answer that names its owner, so it is
        spliced from a template rendered once: each replacement is ``_sip._udp`` + ``q``.
        A replacement that would exceed 255 octets is left out; None when none is left."""
        template = self._naptr_template
        if template is None:
            rds = self.records.naptr("")
            # Replacements rendered against the root end in one zero byte: drop it, add q.
            parts = [(rd.to_wire()[:-1], len(rd.replacement.to_wire()) - 1) for rd in rds]
            template = self._naptr_template = (rds.ttl, parts)
        ttl, parts = template
        fitting = [p for p, prefix in parts if prefix + len(q) <= MAX_WIRE_NAME]
        if not fitting:
            return None
        body = b"".join(
            QNAME_POINTER + _RR_HEADER.pack(RdType.NAPTR, CLASS_IN, ttl, len(p) + len(q)) + p + q
            for p in fitting
        )
        return Answer(NOERROR, body, (len(fitting), 0, 0))

    # -- the responder ------------------------------------------------------------------------

    def _opt(self, flags: int, options: bytes) -> bytes:
        """Our OPT record: the payload we accept, ``flags`` (DO echoed), ``options``."""
        return (
            OPT_PREFIX
            + struct.pack("!HHHH", self.config.udp_payload, 0, flags, len(options))
            + options
        )

    def respond(self, data: bytes, client: str | bytes, tcp: bool = False) -> bytes | None:
        """The response to one query from ``client`` (an IP address as text or packed bytes),
        or None to stay silent.

        Never raises on any input: whatever it cannot parse gets FORMERR (or silence when
        even the header is short, or the packet is itself a response)."""
        if self.trace is not None:
            return self._traced(data, client, tcp)
        # The hot path.  Over UDP a response is a function of the client's view and the
        # query's bytes after the ID (flags, question, EDNS options and ECS included), so a
        # query seen before is answered by patching in its ID.
        if not tcp:
            view = self._client_views.get(client)
            if view is not None:
                tail = self._responses[view].get(data[2:])
                if tail is not None:
                    return data[:2] + tail
        try:
            query = parse_query(data, self.config.udp_payload)
            if not isinstance(query, tuple):
                if query is not None and not tcp and self.udp_ixfr is not None:
                    return self.udp_ixfr(data, client) or query
                return query  # an error response, or None for silence
            return self._response(data, query, client, tcp)
        except Exception as exc:  # a bug costs one answer, never the server
            log_bug("answering a query", exc)
            return error(data, SERVFAIL) if len(data) >= HEADER and not data[2] & QR else None

    def _traced(self, data: bytes, client: str | bytes, tcp: bool) -> bytes | None:
        """:meth:`respond` with the debug switch's lines: the switch is set aside while the
        query is answered the usual way, then back unless it has ended."""
        trace, self.trace = self.trace, None
        out = self.respond(data, client, tcp)
        if trace is not None and trace.exchange(data, client, out):
            self.trace = trace
        return out

    def _response(self, data: bytes, query: Query, client: str | bytes, tcp: bool) -> bytes:
        """The response to a well-formed query whose response is not cached (first sight of
        its bytes, or TCP); over UDP it is then cached."""
        end, form, do, payload, ecs = query
        if ecs:
            view, scope = self._ecs_view(ecs)
        else:
            view, scope = self.regions.view_of(client), 0
        question = data[HEADER:end]
        key = question + _VIEW_BYTES[view]
        answer = self._cache.get(key)
        if answer is None:
            answer = self._resolve_and_cache(key, end - 4 - HEADER, view)
        if not form & EDNS:
            opt = b""
        elif ecs:
            # ECS echoed with a scope (RFC 7871 §7.2.1): the subnet's when the answer depends
            # on the region (see RegionMap.subnet_view), 0 (valid for every client) when not.
            if answer.regional:
                ecs = ecs[:ECS_SCOPE] + bytes((scope,)) + ecs[ECS_SCOPE + 1 :]
            opt = self._opt(DO if do else 0, ecs)
        else:
            opt = self._opt_plain[do]
        out = data[:2] + answer.heads[form] + question + answer.body_after(len(question)) + opt
        limit = TCP_MAX if tcp else max(UDP_MIN, min(payload, self.config.udp_payload))
        if len(out) > limit:
            out = answer.fit(data[:2], question, opt, limit, form)
        if not tcp:
            responses = self._responses[self.regions.view_of(client)]
            if len(responses) >= RESPONSE_CACHE:
                responses.clear()
            responses[data[2:]] = out[2:]
        return out

    def _ecs_view(self, ecs: bytes) -> tuple[int, int]:
        """(view, scope) of the client subnet an ECS option names (checked by
        :func:`parse_query`); a source prefix of 0 means "no subnet", the default view."""
        source = ecs[ECS_SOURCE]
        if not source:
            return 0, 0
        bits = ECS_FAMILIES[ecs[ECS_FAMILY] << 8 | ecs[ECS_FAMILY + 1]]
        address = int.from_bytes(ecs[ECS_ADDRESS:].ljust(bits // 8, b"\x00"), "big")
        # Bits past the source prefix must be zero (§6) but are not checked: mask them.
        address &= ((1 << source) - 1) << (bits - source)
        return self.regions.subnet_view(4 if bits == 32 else 6, address, source)

    def _resolve_and_cache(self, key: bytes, name_len: int, view: int) -> Answer:
        """Resolve a question (``key`` = question bytes + view byte) and remember the answer."""
        q = key[:name_len].lower()
        tail = key[name_len:]
        try:
            answer = self.resolve(q, tail[0] << 8 | tail[1], tail[2] << 8 | tail[3], view)
        except Exception as exc:  # this question gets SERVFAIL, the rest answer
            log_bug("resolving a question", exc)
            answer = self._servfail
        if len(self._cache) >= self.config.cache_size:
            self._cache.clear()
            self._cached.clear()
        self._cache[key] = answer
        self._cached.setdefault(q, []).append(key)
        return answer

    # -- helpers for the server ---------------------------------------------------------------

    def serials(self) -> dict[str, int]:
        """Every zone's SOA serial."""
        return {zone: self.records.serial(zone) for zone in self.snapshot.zones}


# -- taking a query apart -------------------------------------------------------------------------


# A query taken apart by :func:`parse_query`: ``(end, form, do, payload, ecs)``, that is the
# offset just past its question (name, type, class; the name ends 4 octets before), the index
# into :attr:`Answer.heads` (RD copied, ``EDNS`` when it has an OPT record), whether DNSSEC OK
# is set, the UDP payload the client accepts (512 without EDNS), and its client-subnet option
# as it came or empty.  A plain tuple: it is built for every query the response cache misses.
Query = tuple[int, int, bool, int, bytes]


def parse_query(data: bytes, udp_payload: int) -> Query | bytes | None:
    """Take a query apart (header, one question, at most an OPT record with its options), or
    give the whole response to one we do not look up: a bare FORMERR or NOTIMP, BADVERS for
    an EDNS version we do not speak (our OPT offering ``udp_payload``), None for silence
    (shorter than a header, or itself a response)."""
    n = len(data)
    if n < HEADER or data[2] & QR:
        return None
    counts = data[4:HEADER]
    if data[2] & OPCODE or (counts != ONE_QUESTION and counts != ONE_QUESTION_OPT):
        # Other opcodes get NOTIMP, other section counts FORMERR.
        return error(data, NOTIMP if data[2] & OPCODE else FORMERR)
    # The name walked here rather than by name_end(): a call costs 6% of a query the response
    # cache misses, and a name running past the data is the one IndexError.
    i = HEADER
    try:
        length = data[i]
        while length:
            if length > MAX_LABEL:
                return error(data, FORMERR)
            i += length + 1
            length = data[i]
    except IndexError:
        return error(data, FORMERR)
    qend = i + 1
    end = qend + 4
    if end > n or qend - HEADER > MAX_WIRE_NAME:
        return error(data, FORMERR)
    rd = data[2] & RD
    if not counts[7]:
        if end != n:
            return error(data, FORMERR)
        return end, rd, False, UDP_MIN, b""
    # EDNS0 (RFC 6891): exactly one OPT record with the root name, and nothing after it.
    if data[end : end + 3] != OPT_PREFIX or n < end + OPT_OPTIONS:
        return error(data, FORMERR)
    rdlen = data[end + OPT_RDLENGTH] << 8 | data[end + OPT_RDLENGTH + 1]
    if end + OPT_OPTIONS + rdlen != n:
        return error(data, FORMERR)
    do = bool(data[end + OPT_FLAGS] & DO_BYTE)
    if data[end + OPT_VERSION]:
        return badvers(data, end, do, udp_payload)
    ecs = client_subnet(data, end + OPT_OPTIONS) if rdlen else b""
    if ecs is None:
        return error(data, FORMERR)
    payload = data[end + OPT_PAYLOAD] << 8 | data[end + OPT_PAYLOAD + 1]
    return end, rd | EDNS, do, payload, ecs


def client_subnet(data: bytes, i: int) -> bytes | None:
    """The client-subnet option (RFC 7871) among the EDNS options from ``i`` to the end, as it
    came (the last one if several; empty if none), or None when any option is malformed."""
    n = len(data)
    ecs = b""
    while i < n:
        end = i + OPTION_HEADER + (data[i + 2] << 8 | data[i + 3]) if i + 4 <= n else n + 1
        if end > n:
            return None
        if data[i] << 8 | data[i + 1] == OPTION_ECS:
            if end - i < ECS_ADDRESS:
                return None
            bits = ECS_FAMILIES.get(data[i + ECS_FAMILY] << 8 | data[i + ECS_FAMILY + 1])
            source = data[i + ECS_SOURCE]
            if (
                bits is None
                or source > bits
                or data[i + ECS_SCOPE]
                or end - i - ECS_ADDRESS != (source + 7) // 8
            ):
                return None
            ecs = data[i:end]
        i = end
    return ecs


def error(data: bytes, rcode: int) -> bytes:
    """A bare error response: the query's ID, opcode and RD, no sections."""
    return data[:2] + bytes((QR | (data[2] & ECHOED), rcode)) + b"\x00" * 8


def badvers(data: bytes, end: int, do: bool, udp_payload: int) -> bytes:
    """BADVERS (RFC 6891 §6.1.3): the extended rcode's upper bits in our OPT record, its lower
    bits in the header; the question (up to ``end``) echoed, so a resolver can match the
    answer to what it asked, and no section but the OPT record."""
    opt = OPT_PREFIX + struct.pack("!HBBHH", udp_payload, BADVERS >> 4, 0, DO if do else 0, 0)
    head = bytes((QR | (data[2] & ECHOED), BADVERS & RCODE))
    return data[:2] + head + ONE_QUESTION_OPT + data[HEADER:end] + opt


def question(data: bytes) -> tuple[bytes, int] | None:
    """(lower-case wire qname, qtype) of a query, or None if the question is malformed."""
    if len(data) < HEADER or data[4:6] != ONE_QUESTION[:2]:
        return None
    end = name_end(data)
    if end < 0 or end + 2 > len(data):
        return None
    return data[HEADER:end].lower(), data[end] << 8 | data[end + 1]
