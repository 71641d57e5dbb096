"""An immutable view of one store revision: everything the SIP edge and the DNS need.

Services hold a reference to the current snapshot and swap it atomically when a newer revision
arrives; work in flight finishes on the snapshot it started with.  The value rules of a site
(addresses, networks, ports, weight, order, names) live here too, one function per kind, so
that every interface that writes a site and every store read applies the same ones.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sipzone.model.certificates import Certificate
from sipzone.model.errors import BadAddress, BadNetwork, BadWord, NoRoomForServiceNames, OutOfRange
from sipzone.model.health import DEFAULT_CHECK, HealthCheck
from sipzone.model.matcher import Match, Matcher
from sipzone.model.names import MAX_LABEL, MAX_NAME, lookup_key
from sipzone.model.tenancy import TenancyTree, TenantView
from sipzone.model.trunks import Trunk

TRANSPORTS = ("udp", "tcp", "tls")
# A site's SIP port per transport; 0 means the site does not offer that transport, and the DNS
# publishes no SRV or NAPTR for it.  No TLS unless a port is given: it needs a certificate
# (`cert add`) and a `tls:` listener first.
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"udp": 5060, "tcp": 5060, "tls": 0})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Numbers a site carries, bounded by the DNS field each one ends up in.
MAX_WEIGHT = 65535  # SRV weight, 16 bits (RFC 2782)
MAX_ORDER = 65535  # sites in distinct orders get SRV priorities 10, 20, ...: keep it small
MAX_PORT = 65535
MAX_REGION = 100
# A site name is one DNS label: without --host, the site's SIP host is "<site name>.<zone>".
_SITE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_REGION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_REGION - 1}}}\Z")


def parse_vip(text: str, what: str = "virtual IP") -> IPAddress:
    """A virtual IP clients are sent to (or another published address, ``what``): a plain
    unicast IPv4 or IPv6 address.

    Refused: a scope id (``fe80::1%eth0``: no DNS record can carry one), the unspecified
    address, multicast, link-local (only reachable on one link), IPv4-mapped IPv6 and the
    IPv4 broadcast and reserved ranges.  Loopback and the documentation ranges are kept: tests
    and demos use them.
    """
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise BadAddress(f"{what} {text!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise BadAddress(
                f"{what} {text!r} has a scope id ('%{address.scope_id}'); DNS records "
                "carry plain addresses only"
            )
        if address.ipv4_mapped is not None:
            raise BadAddress(
                f"{what} {text!r} is an IPv4-mapped IPv6 address; give {address.ipv4_mapped}"
            )
    refused = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address.is_link_local, "a link-local address, reachable on one link only"),
        (isinstance(address, ipaddress.IPv4Address) and address.is_reserved, "a reserved address"),
    )
    for hit, kind in refused:
        if hit:
            raise BadAddress(
                f"{what} {text!r} is {kind}; a {what} must be a unicast address clients can reach"
            )
    return address


def parse_network(text: str) -> IPNetwork:
    """A client network in strict CIDR form (``10.0.0.0/8``; no host bits, no scope id)."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise BadNetwork(
            f"client network {text!r} is not a CIDR such as 10.0.0.0/8 ({exc})"
        ) from None
    if "%" in text:
        raise BadNetwork(f"client network {text!r} has a scope id; give a plain CIDR")
    if network.is_multicast:
        raise BadNetwork(f"client network {text!r} is multicast; no client sends from there")
    return network


def check_number(what: str, value: int, low: int, high: int) -> int:
    """``value`` if ``low <= value <= high``, else :class:`OutOfRange` naming the field."""
    if not low <= value <= high:
        raise OutOfRange(f"{what} {value} is outside {low}-{high}")
    return value


def check_port(transport: str, value: int) -> int:
    """A site's port for ``transport``; 0 means the site does not offer that transport."""
    return check_number(f"{transport} port (0: not offered)", value, 0, MAX_PORT)


def check_weight(value: int) -> int:
    return check_number("weight (the SRV weight)", value, 0, MAX_WEIGHT)


def check_order(value: int) -> int:
    return check_number("order", value, 0, MAX_ORDER)


def parse_site_name(text: str) -> str:
    """A site name: one DNS label (letters, digits, inner '-'), as it forms the default host."""
    if not _SITE_NAME.match(text):
        raise BadWord(
            f"site name {text!r} must be one DNS label: letters, digits and inner '-', at most "
            f"{MAX_LABEL} (without --host the site's SIP host is <site name>.<zone>)"
        )
    return text


def parse_region(text: str) -> str:
    """A region: a word such as ``eu`` or ``us-east``."""
    if not _REGION.match(text):
        raise BadWord(f"region {text!r} must be a word such as 'eu' or 'us-east'")
    return text


def check_site_host_fits(site: str, host: str | None, zones: Iterable[str]) -> None:
    """Without a host, a site's SIP host in zone Z is ``<site>.Z``: it must be a valid name."""
    if host is not None:
        return
    for zone in zones:
        if len(site) + 1 + len(zone) > MAX_NAME:
            raise NoRoomForServiceNames(
                f"site {site!r} without --host would be named '{site}.{zone}' in zone "
                f"{zone!r}, longer than {MAX_NAME} octets; give the site a --host"
            )


@dataclass(frozen=True, slots=True)
class Site:
    """One location of the installation."""

    name: str
    region: str
    vips: tuple[IPAddress, ...]
    host: str | None = None
    ports: Mapping[str, int] = field(default_factory=lambda: DEFAULT_PORTS)
    networks: tuple[IPNetwork, ...] = ()
    weight: int = 100
    order: int = 0  # lower comes first where regions do not decide
    upstream: str | None = None  # default SIP core URI for traffic landing on this site
    healthy: bool = True
    # How nodes probe the site, and whether an operator drained it (sipzone.model.health).
    check: HealthCheck = DEFAULT_CHECK
    drained: bool = False

    def host_in(self, zone: str) -> str:
        """The site's SIP host as seen from ``zone``: its configured host, else
        ``<site name>.<zone>`` so every zone is self-contained."""
        return self.host or f"{self.name}.{zone}"

    @property
    def vips4(self) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(a for a in self.vips if isinstance(a, ipaddress.IPv4Address))

    @property
    def vips6(self) -> tuple[ipaddress.IPv6Address, ...]:
        return tuple(a for a in self.vips if isinstance(a, ipaddress.IPv6Address))


@dataclass(frozen=True, slots=True)
class NameServer:
    """A host that answers DNS for the installation's zones: a node running ``serve --dns`` on
    port 53, or a secondary fed by zone transfer.  Every zone lists them all as NS (the first
    is the SOA MNAME); a name inside one of the zones needs its ``addresses``, which that zone
    publishes (the glue a resolver needs to reach it)."""

    name: str
    addresses: tuple[IPAddress, ...] = ()


# Stored as one installation setting, one name server a line: "NAME [ADDRESS ...]".
NAMESERVERS_SETTING = "nameservers"


def nameservers_text(servers: Iterable[NameServer]) -> str:
    return "\n".join(" ".join((s.name, *map(str, s.addresses))) for s in servers)


def parse_nameservers(text: str) -> tuple[NameServer, ...]:
    """The name servers of :func:`nameservers_text`; a bad address raises BadAddress."""
    out = []
    for line in text.splitlines():
        name, *addresses = line.split()
        out.append(NameServer(name, tuple(parse_vip(a, "name server address") for a in addresses)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed from the previous snapshot, when only rules changed.

    Consumers that precompute per name (the DNS answer cache) rebuild just these names; a
    snapshot without a delta means "anything may have changed, rebuild everything".
    """

    added: tuple[str, ...] = ()  # rule texts, ``*.b`` for wildcards
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    revision: int
    tenants: TenancyTree
    matcher: Matcher[TenantView]
    sites: tuple[Site, ...] = ()
    zones: tuple[str, ...] = ()
    email_domain: str | None = None
    # repr=False: the settings hold the SIP branch secret, which no log or test failure may show.
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)
    delta: Delta | None = None
    # TLS certificates, the default one first, then in the order they were added.
    certificates: tuple[Certificate, ...] = field(default=(), repr=False)
    trunks: tuple[Trunk, ...] = ()  # by name
    # ACME DNS-01 values being published: (``_acme-challenge.NAME``, its TXT values), by name.
    challenges: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Per zone, the revision that last changed what the zone publishes: its SOA serial, so a
    # change touches only its own zone's serial and NOTIFY.  A zone missing here (snapshots
    # built in memory) takes the snapshot's revision.
    zone_revisions: Mapping[str, int] = field(default_factory=dict)
    nameservers: tuple[NameServer, ...] = ()  # empty in stores older than the setting

    @classmethod
    def build(
        cls,
        revision: int,
        tenants: TenancyTree,
        rules: list[tuple[str, str]],
        sites: tuple[Site, ...] = (),
        zones: tuple[str, ...] = (),
        email_domain: str | None = None,
        settings: Mapping[str, str] | None = None,
        certificates: tuple[Certificate, ...] = (),
        trunks: tuple[Trunk, ...] = (),
        challenges: tuple[tuple[str, tuple[str, ...]], ...] = (),
        zone_revisions: Mapping[str, int] | None = None,
        nameservers: tuple[NameServer, ...] = (),
    ) -> Snapshot:
        """``rules`` are ``(rule text, owner tenant name)`` pairs as stored."""
        views = tenants.views
        matcher = Matcher.from_rules((text, views[owner]) for text, owner in rules)
        return cls(
            revision,
            tenants,
            matcher,
            tuple(sorted(sites, key=lambda s: (s.order, s.name))),
            tuple(sorted(zones)),
            email_domain,
            MappingProxyType(dict(settings or {})),
            certificates=certificates,
            trunks=trunks,
            challenges=challenges,
            zone_revisions=MappingProxyType(dict(zone_revisions or {})),
            nameservers=nameservers,
        )

    @classmethod
    def empty(cls) -> Snapshot:
        return cls.build(0, TenancyTree([]), [])

    def check(self, host: str) -> Match[TenantView] | None:
        """Is ``host`` (as written anywhere: any case, trailing dot, U-labels) admitted?"""
        return self.matcher.match(lookup_key(host))

    def serving(self) -> tuple[Site, ...]:
        """The sites answers send clients to: the healthy ones not drained; if every site is
        down, all of them anyway (those not drained, if any): a wrong guess about health
        must never leave clients with nowhere to go."""
        sites = self.sites
        return (
            tuple(s for s in sites if s.healthy and not s.drained)
            or tuple(s for s in sites if not s.drained)
            or sites
        )

    def zone_of(self, name: str) -> str | None:
        """The longest zone we are authoritative for that holds ``name``, or None."""
        return zone_holding(name, self.zones)

    def zone_revision(self, zone: str) -> int:
        """The revision that last changed what ``zone`` publishes (see ``zone_revisions``)."""
        return self.zone_revisions.get(zone, self.revision)


def zone_holding(name: str, zones: Iterable[str]) -> str | None:
    """The longest of ``zones`` that holds ``name`` (a nested zone holds its own names)."""
    best = None
    for zone in zones:
        if (name == zone or name.endswith("." + zone)) and (best is None or len(zone) > len(best)):
            best = zone
    return best


def rule_zone(rule: str, zones: Iterable[str]) -> str | None:
    """The zone whose records a SIP domain rule (``D`` or ``*.B``) changes: the one holding
    ``D``, or ``B`` (``*.B`` and the service names ``_sip._udp.B`` lie there too)."""
    return zone_holding(rule[2:] if rule.startswith("*.") else rule, zones)


Listener = Callable[[Snapshot, Snapshot], None]


class SnapshotHolder:
    """The one mutable cell: services read ``holder.current`` per request; the runtime swaps it.

    A swap is a single reference assignment, so a reader sees the old or the new snapshot,
    never a mixture.  Listeners run after the swap with ``(old, new)``; they must be quick
    (they run on the event loop) and must not raise.
    """

    __slots__ = ("_listeners", "current")

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.current: Snapshot = snapshot if snapshot is not None else Snapshot.empty()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, snapshot: Snapshot) -> None:
        old = self.current
        self.current = snapshot
        for listener in self._listeners:
            listener(old, snapshot)
