"""The records one snapshot publishes: which names exist in our zones and their record sets.

Theory of operation: a name in one of our zones plays one or more *roles* (zone apex, site host,
email domain, SIP domain, SIP service name ``_sip._udp.D``, ACME challenge
``_acme-challenge.D`` with its TXT values while an order runs); each role contributes record sets,
and the record sets of a role depend only on the sites, the zone and, for SRV alone, the
client's *region view*, never on the name itself (NAPTR is the one exception: its replacement
names the domain).  So the live server compiles each (zone, roles, region) once and shares it
between a million domains, and zone transfer and export walk the same roles to list a zone.
Nothing here does I/O.

A site publishes only the transports it has a port for (port 0: not offered): the service
names ``_sip._udp.D`` and friends exist only for transports some site offers, and the SRV and
NAPTR sets list only the serving sites that offer them.  A value that cannot be rendered (a
scoped IPv6 address such as ``fe80::1%eth0``, a name that is not a DNS name) is left out of its
record set and logged, rate-limited: one bad row never takes a zone down.

The email domain ``E`` brings the names mail clients configure themselves from: the RFC 6186 /
RFC 8314 service names ``_imaps._tcp.E`` and friends (each serving site's endpoint in the
region's order, like SIP SRV, or the target "." for a service not offered) and the hosts
``autoconfig.E`` and ``autodiscover.E`` (the email domain's addresses).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype

from sipzone.dns import DnsConfig
from sipzone.eventlog import EventLog
from sipzone.model.errors import SipzoneError
from sipzone.model.mail import (
    MAIL_SERVICES,
    SETTING,
    SRV_NAMES,
    MailEndpoint,
    mail_targets,
    stored_endpoints,
)
from sipzone.model.names import MAX_NAME
from sipzone.model.snapshot import IPAddress, Site, Snapshot

log = logging.getLogger("sipzone.dns")
# Records are rebuilt on every store change: a bad row is logged at its first sight, then
# once a minute with a count, not once per rebuild.
events = EventLog(log)

IN = dns.rdataclass.IN
RdType = dns.rdatatype.RdataType

# RFC 3263 service names, in the order a NAPTR set prefers them (most secure first).
# (first label, second label, site port key, NAPTR service field)
SERVICES: tuple[tuple[str, str, str, str], ...] = (
    ("_sips", "_tcp", "tls", "SIPS+D2T"),
    ("_sip", "_tcp", "tcp", "SIP+D2T"),
    ("_sip", "_udp", "udp", "SIP+D2U"),
)
SERVICE_PREFIXES: dict[tuple[str, str], int] = {(s[0], s[1]): i for i, s in enumerate(SERVICES)}
PROTOCOL_LABELS = frozenset(s[1] for s in SERVICES)  # "_udp.D" and "_tcp.D" are empty non-terminals

SOA_TIMERS = (3600, 600, 1209600)  # refresh, retry, expire; minimum is the negative TTL
MX_PREFERENCE = 10
PRIORITY_STEP = 10


@dataclass(frozen=True, slots=True)
class Role:
    """What a name is for: ``kind`` is apex, host, email, domain or service; ``index`` picks
    the site (host) or the SERVICES entry (service)."""

    kind: str
    index: int = 0


APEX = Role("apex")
EMAIL = Role("email")
DOMAIN = Role("domain")
# When two roles share a name and give the same type, the first in this order wins.
ROLE_ORDER = {
    "apex": 0, "host": 1, "ns": 2, "email": 3, "service": 4, "domain": 5, "acme": 6,
    "mail": 7, "mailweb": 8,
}  # fmt: skip
# Names under the email domain that mail clients configure themselves from: the RFC 6186 /
# RFC 8314 service names (Role("mail", i) for MAIL SRV_NAMES[i]) and the hosts of Thunderbird's
# autoconfig and Outlook's autodiscover (Role("mailweb"): the email domain's addresses, no MX).
MAILWEB_LABELS = ("autoconfig", "autodiscover")
MAILWEB = Role("mailweb")
# RFC 2782: "A Target of '.' means that the service is decidedly not available at this domain."
NOT_OFFERED = "0 0 0 ."
# ACME DNS-01 values (``_acme-challenge.D`` TXT) live seconds to minutes: a short TTL, so a
# resolver never holds a value past its order.
ACME_TTL = 60
# The roles of every SIP domain and every service name: shared objects, so the walk of a
# million names allocates no tuples and its consumers can cache renderings per roles.
DOMAIN_ROLES: tuple[Role, ...] = (DOMAIN,)
SERVICE_ROLES: tuple[tuple[Role, ...], ...] = tuple(
    (Role("service", i),) for i in range(len(SERVICES))
)

Rdatasets = dict[RdType, dns.rdataset.Rdataset]


def _rdataset(rdtype: RdType, ttl: int, rdatas: Sequence[dns.rdata.Rdata]) -> dns.rdataset.Rdataset:
    rds = dns.rdataset.Rdataset(IN, rdtype)
    rds.update_ttl(ttl)
    for rd in rdatas:
        rds.add(rd)
    return rds


def _rdata(rdtype: RdType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(IN, rdtype, text)


def _rdatas(rdtype: RdType, texts: Sequence[tuple[str, str]]) -> list[dns.rdata.Rdata]:
    """The records of ``(text, what it comes from)`` pairs that render, in order and without
    duplicates; the others are logged (rate-limited) and left out."""
    out: dict[dns.rdata.Rdata, None] = {}
    for text, source in texts:
        try:
            out[_rdata(rdtype, text)] = None
        except Exception as exc:  # any value dnspython refuses is left out
            events.warning(
                f"render {rdtype.name} {text}",
                "%s: %s record %r cannot be published (%s); left out",
                source,
                rdtype.name,
                text,
                exc,
            )
    return list(out)


def _address_rdatas(
    addresses: Iterable[IPAddress], source: str
) -> tuple[list[dns.rdata.Rdata], list[dns.rdata.Rdata]]:
    """The A and the AAAA records of ``addresses`` (of ``source``, for the log)."""
    v4: list[tuple[str, str]] = []
    v6: list[tuple[str, str]] = []
    for address in addresses:
        text = str(address)
        (v6 if ":" in text else v4).append((text, source))
    return _rdatas(RdType.A, v4), _rdatas(RdType.AAAA, v6)


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


class Records:
    """Record sets of one snapshot for every zone and region view.

    Region view 0 is the default order (client matched no site network); view ``i`` > 0 is
    ``regions[i]``.
    """

    def __init__(self, snapshot: Snapshot, config: DnsConfig) -> None:
        self.snapshot = snapshot
        self.config = config
        self.ttl = config.ttl
        sites = snapshot.sites
        self.regions: tuple[str | None, ...] = (None, *sorted({s.region for s in sites}))
        # Unhealthy sites leave the SIP answers (never all of them: Snapshot.serving).
        self.serving: tuple[Site, ...] = snapshot.serving()
        # What health changes is cached briefly while a site is out (DnsConfig.health_ttl).
        self.serving_ttl = (
            min(self.ttl, config.health_ttl) if len(self.serving) < len(sites) else self.ttl
        )
        # Only a client network can select a view other than the default one.
        self.regional = any(s.networks for s in sites)
        # A and AAAA records per site name, rendered once; an address that cannot be
        # published (a scope ID) is dropped here and nowhere else.
        self._addrs = {s.name: _address_rdatas(s.vips, f"site {s.name}") for s in sites}
        # SERVICES indexes some site offers (their names exist) and some serving site offers
        # (NAPTR lists them); both follow SERVICES' order of preference.
        self.offered = tuple(i for i in range(len(SERVICES)) if _offering(sites, i))
        self.naptr_services = tuple(i for i in self.offered if _offering(self.serving, i))
        self.protocols = frozenset(SERVICES[i][1] for i in self.offered)
        self._views = [self._site_order(r) for r in self.regions]
        if snapshot.zones and not snapshot.nameservers and not config.nameservers:
            events.warning(
                "no name server",
                "no name server in the store: every zone's NS are the sites' SIP hosts, which "
                "may not run this DNS; `sipzone nameserver add NAME --address IP` names the hosts "
                "that do",
            )
        self.static: dict[str, tuple[Role, ...]] = {}
        for zone in snapshot.zones:
            self._add_static(zone, APEX)
        for i, site in enumerate(sites):
            for host in {self.site_host(site, zone) for zone in snapshot.zones}:
                if snapshot.zone_of(host) is not None:
                    self._add_static(host, Role("host", i))
        for i, server in enumerate(snapshot.nameservers):
            if server.addresses and snapshot.zone_of(server.name) is not None:
                self._add_static(server.name, Role("ns", i))
        email = snapshot.email_domain
        if email and snapshot.zone_of(email) is not None:
            self._add_static(email, EMAIL)
            for i, (label, _service) in enumerate(SRV_NAMES):
                self._add_static(f"{label}._tcp.{email}", Role("mail", i))
            for label in MAILWEB_LABELS:
                self._add_static(f"{label}.{email}", MAILWEB)
        self._mail = {s: self._mail_endpoints(s) for s in MAIL_SERVICES}
        for i, (name, _) in enumerate(snapshot.challenges):
            if snapshot.zone_of(name) is not None:
                self._add_static(name, Role("acme", i))

    def serial(self, zone: str) -> int:
        """The SOA serial of ``zone``: the revision that last changed it, modulo 2**32 (RFC 1982
        arithmetic copes with the wrap)."""
        return self.snapshot.zone_revision(zone) % 2**32

    def _add_static(self, name: str, role: Role) -> None:
        roles = (*self.static.get(name, ()), role)
        self.static[name] = tuple(sorted(roles, key=lambda r: (ROLE_ORDER[r.kind], r.index)))

    # -- sites and regions -------------------------------------------------------------------

    @staticmethod
    def site_host(site: Site, zone: str) -> str:
        """The SIP host of ``site`` as seen from ``zone`` (:meth:`Site.host_in`)."""
        return site.host_in(zone)

    def _site_order(self, region: str | None) -> tuple[tuple[int, Site], ...]:
        """(SRV priority, site): the region's sites first, the others in configured order;
        sites with the same configured order share a priority so their weights split load."""
        local = [s for s in self.serving if region is not None and s.region == region]
        others = [s for s in self.serving if not (region is not None and s.region == region)]
        out: list[tuple[int, Site]] = [(PRIORITY_STEP, s) for s in local]
        priority = PRIORITY_STEP if not local else 2 * PRIORITY_STEP
        last: int | None = None
        for site in others:
            if last is not None and site.order != last:
                priority += PRIORITY_STEP
            out.append((priority, site))
            last = site.order
        return tuple(out)

    def region_index(self, name: str | None) -> int:
        """The view index of a region name (``--region R``); unknown names raise ValueError."""
        if name is None:
            return 0
        return self.regions.index(name)

    def networks(self) -> Iterator[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]:
        """(client network, view index) for every site network."""
        for site in self.snapshot.sites:
            for net in site.networks:
                yield net, self.regions.index(site.region)

    # -- record sets per role ----------------------------------------------------------------

    def nameservers(self, zone: str) -> list[dns.rdata.Rdata]:
        """NS records of ``zone``: the installation's name servers (``sipzone nameserver
        add``).  A store from before that setting has none; it keeps what it published then:
        ``--nameserver``, else the sites' SIP hosts, else ``ns1.<zone>``."""
        hosts: Iterable[str] = [s.name for s in self.snapshot.nameservers]
        if not hosts:
            sites = self.snapshot.sites
            hosts = self.config.nameservers or [self.site_host(s, zone) for s in sites]
        ns = _rdatas(RdType.NS, [(f"{h}.", f"zone {zone} NS") for h in dict.fromkeys(hosts)])
        return ns or [_rdata(RdType.NS, f"ns1.{zone}.")]

    def soa(self, zone: str, ttl: int | None = None) -> dns.rdataset.Rdataset:
        """The SOA of ``zone``: MINIMUM is the negative TTL (RFC 2308 §4); the record's own TTL
        is ``ttl``, default the record TTL (negative answers pass the lower of the two, §3)."""
        mname = self.nameservers(zone)[0].target  # type: ignore[attr-defined]
        timers = " ".join(map(str, SOA_TIMERS))
        text = f"{mname} hostmaster.{zone}. {self.serial(zone)} {timers} {self.config.negative_ttl}"
        return _rdataset(RdType.SOA, self.ttl if ttl is None else ttl, [_rdata(RdType.SOA, text)])

    def _addresses(self, sites: Sequence[Site], ttl: int | None = None) -> Rdatasets:
        v4 = [rd for s in sites for rd in self._addrs[s.name][0]]
        v6 = [rd for s in sites for rd in self._addrs[s.name][1]]
        return self._address_rdatasets(v4, v6, ttl)

    def _address_rdatasets(
        self, v4: list[dns.rdata.Rdata], v6: list[dns.rdata.Rdata], ttl: int | None = None
    ) -> Rdatasets:
        ttl = self.ttl if ttl is None else ttl
        out: Rdatasets = {}
        if v4:
            out[RdType.A] = _rdataset(RdType.A, ttl, list(dict.fromkeys(v4)))
        if v6:
            out[RdType.AAAA] = _rdataset(RdType.AAAA, ttl, list(dict.fromkeys(v6)))
        return out

    def _srv(self, zone: str, service: int, view: int) -> dns.rdataset.Rdataset:
        port_key = SERVICES[service][2]
        texts = [
            (
                f"{priority} {site.weight} {site.ports[port_key]} {self.site_host(site, zone)}.",
                f"site {site.name}",
            )
            for priority, site in self._views[view]
            if site.ports.get(port_key, 0)
        ]
        return _rdataset(RdType.SRV, self.serving_ttl, _rdatas(RdType.SRV, texts))

    def _mail_endpoints(self, service: str) -> tuple[MailEndpoint, ...]:
        try:
            return stored_endpoints(service, self.snapshot.settings.get(SETTING[service]))
        except SipzoneError as exc:  # the store's read drops these; a hand-made snapshot may not
            events.warning(f"mail {service}", "email %s endpoints left out: %s", service, exc)
            return ()

    def _mail_srv(self, zone: str, name: int, view: int) -> dns.rdataset.Rdataset:
        """SRV of an RFC 6186 name: the serving sites' endpoints of its service in the region
        view's order (a site's own, else the installation-wide one; sites sharing one listed
        once, at the first one's priority), or the target "." when none is offered."""
        service = SRV_NAMES[name][1]
        endpoints = self._mail[service] if service else ()
        texts = [
            (f"{priority} {site.weight} {port} {host}.", f"site {site.name}")
            for priority, site, host, port in mail_targets(endpoints, self._views[view], zone)
        ]
        rdatas = _rdatas(RdType.SRV, texts) or [_rdata(RdType.SRV, NOT_OFFERED)]
        return _rdataset(RdType.SRV, self.serving_ttl, rdatas)

    def naptr(self, base: str) -> dns.rdataset.Rdataset:
        """NAPTR at a SIP domain (RFC 3263 §4.1): each transport some serving site offers, to its
        SRV name under ``base`` (the empty string gives replacements ending at the root, a
        template to append to).  The order value stays the transport's rank in SERVICES."""
        suffix = f".{base}." if base else "."
        texts = []
        for i in self.naptr_services:
            first, second, _, service = SERVICES[i]
            texts.append((f'{(i + 1) * 10} 10 "s" "{service}" "" {first}.{second}{suffix}', base))
        return _rdataset(RdType.NAPTR, self.serving_ttl, _rdatas(RdType.NAPTR, texts))

    def rdatasets(self, zone: str, roles: Sequence[Role], view: int) -> Rdatasets:
        """The record sets of a name with ``roles`` in ``zone`` for region ``view``, NAPTR
        excepted (it names its owner; see :meth:`naptr`)."""
        out: Rdatasets = {}
        for role in roles:
            for rdtype, rds in self._role_rdatasets(zone, role, view).items():
                # No site serving (none configured): no record set, so NODATA with the SOA.
                if len(rds):
                    out.setdefault(rdtype, rds)
        return out

    def _role_rdatasets(self, zone: str, role: Role, view: int) -> Rdatasets:
        kind = role.kind
        if kind == "apex":
            ns = _rdataset(RdType.NS, self.ttl, self.nameservers(zone))
            return {RdType.SOA: self.soa(zone), RdType.NS: ns}
        if kind == "host":
            return self._addresses([self.snapshot.sites[role.index]])
        if kind == "ns":
            server = self.snapshot.nameservers[role.index]
            return self._address_rdatasets(
                *_address_rdatas(server.addresses, f"name server {server.name}")
            )
        if kind == "email":
            out = self._sip_addresses()
            email = self.snapshot.email_domain or zone
            target = self.snapshot.settings.get("email_mx") or email
            mx = _rdatas(RdType.MX, [(f"{MX_PREFERENCE} {target}.", "email domain")])
            out[RdType.MX] = _rdataset(RdType.MX, self.ttl, mx)
            return out
        if kind == "domain":
            return self._sip_addresses()
        if kind == "service":
            return {RdType.SRV: self._srv(zone, role.index, view)}
        if kind == "mail":
            return {RdType.SRV: self._mail_srv(zone, role.index, view)}
        if kind == "mailweb":
            return self._addresses(self.serving, self.serving_ttl)
        if kind == "acme":
            name, values = self.snapshot.challenges[role.index]
            txt = _rdatas(RdType.TXT, [(f'"{value}"', name) for value in values])
            return {RdType.TXT: _rdataset(RdType.TXT, min(self.ttl, ACME_TTL), txt)}
        raise ValueError(f"unknown role {kind!r}")

    def _sip_addresses(self) -> Rdatasets:
        """A/AAAA of SIP domains and the email domain: the serving sites' addresses, the same
        set and order in every region.  Resolvers shuffle an address set anyway, so a
        per-region order would only cost them one cache entry per client network; steering
        is the SRV priority's job."""
        return self._addresses(self.serving, self.serving_ttl)

    def is_regional(self, roles: Sequence[Role]) -> bool:
        """Whether answers for these roles differ between region views (ECS scope > 0): only
        SRV (SIP's and the email domain's), whose priorities put the client's region first."""
        return self.regional and any(r.kind in ("service", "mail") for r in roles)

    def glue(self, zone: str, rds: dns.rdataset.Rdataset) -> Iterator[tuple[str, Rdatasets]]:
        """Addresses of the in-zone SRV/NS/MX targets in ``rds``, for the additional section."""
        for rd in rds:
            target = getattr(rd, "target", None) or getattr(rd, "exchange", None)
            if target is None:
                continue
            name = target.to_text(omit_final_dot=True)
            roles = self.static.get(name)
            if roles and in_zone(name, zone):
                addrs = self.rdatasets(zone, [r for r in roles if r.kind != "apex"], 0)
                yield name, {t: r for t, r in addrs.items() if t in (RdType.A, RdType.AAAA)}

    # -- whole zones (transfer, export) -------------------------------------------------------

    def zone_walk(
        self, zone: str, too_long: Callable[[str], None]
    ) -> Iterator[tuple[str, tuple[Role, ...], str | None]]:
        """Every owner name of ``zone`` with its roles and, for SIP domains, the name its NAPTR
        points under; each exactly once, in no particular order, with no table of the zone's
        names, so a transfer or export of a million domains starts at once and costs memory
        independent of the zone's size.  Wildcards come out as ``*.B`` with their service names
        ``_sip._udp.B``, the closest a zone file gets to per-name SRV synthesis.

        The snapshot's rule dicts are never mutated, so the walk may be resumed across event
        loop turns while newer snapshots come and go.  A name longer than 253 octets (255 on the
        wire: a ``_sips._tcp.`` owner over a long domain) cannot be written; it is handed to
        ``too_long`` and left out.
        """
        matcher = self.snapshot.matcher
        suffix = "." + zone
        # Zones nested in this one hold their own names.
        nested = tuple("." + z for z in self.snapshot.zones if z.endswith(suffix))

        def mine(name: str) -> bool:
            return (name == zone or name.endswith(suffix)) and not (
                nested and any(("." + name).endswith(n) for n in nested)
            )

        # Site hosts, the apex and the email domain first, with whatever SIP roles they also have.
        static = {n: r for n, r in self.static.items() if mine(n)}
        for name in static:
            found = self.zone_owner(name)
            assert found is not None  # a static name always has its own roles
            yield name, *found
        # Then every SIP domain (``*.B`` for a wildcard) and its service names.  An exact rule
        # for a wildcard's base B has already listed B's service names.
        services = [
            (f"{a}.{b}.", roles)
            for i, ((a, b, _, _), roles) in enumerate(zip(SERVICES, SERVICE_ROLES, strict=True))
            if i in self.offered  # a transport no site offers has no names (see ``offered``)
        ]
        exact = ((n, n, True) for n in matcher.exact_names() if mine(n))
        wild = (
            ("*." + b, b, matcher.exact_owner(b) is None)
            for b in matcher.wildcard_bases()
            if mine(b)
        )
        for name, base, with_services in itertools.chain(exact, wild):
            if name in static:
                pass
            elif len(name) <= MAX_NAME:
                yield name, DOMAIN_ROLES, base
            else:
                too_long(name)
            if with_services:
                for prefix, roles in services:
                    owner = prefix + base
                    if owner in static:
                        continue
                    if len(owner) <= MAX_NAME:
                        yield owner, roles, None
                    else:
                        too_long(owner)

    def zone_owner(self, name: str) -> tuple[tuple[Role, ...], str | None] | None:
        """The roles of ``name`` as :meth:`zone_walk` lists it (and the name its NAPTR points
        under), or None when the walk has no records there; one name at a time, so what a
        change to a few rules does to a zone (IXFR) costs those names only.  The caller checks
        that ``name`` lies in the zone (not in a nested one) and fits in 255 octets."""
        matcher = self.snapshot.matcher
        roles = self.static.get(name, ())
        naptr_base = None
        if name.startswith("*."):
            if matcher.wildcard_owner(name[2:]) is not None:
                roles, naptr_base = (*roles, DOMAIN), name[2:]
        elif matcher.exact_owner(name) is not None:
            roles, naptr_base = (*roles, DOMAIN), name
        parts = name.split(".", 2)
        service = SERVICE_PREFIXES.get((parts[0], parts[1])) if len(parts) == 3 else None
        if (
            service is not None
            and service in self.offered
            and (
                matcher.exact_owner(parts[2]) is not None
                or matcher.wildcard_owner(parts[2]) is not None
            )
        ):
            roles = (*roles, SERVICE_ROLES[service][0])
        if not roles:
            return None
        if roles == DOMAIN_ROLES:  # the shared tuples (see DOMAIN_ROLES)
            return DOMAIN_ROLES, naptr_base
        if len(roles) == 1 and roles[0].kind == "service":
            return SERVICE_ROLES[roles[0].index], naptr_base
        return tuple(sorted(roles, key=lambda r: (ROLE_ORDER[r.kind], r.index))), naptr_base


def _offering(sites: Sequence[Site], service: int) -> bool:
    """Whether one of ``sites`` has a port (not 0) for SERVICES[service]'s transport."""
    key = SERVICES[service][2]
    return any(site.ports.get(key, 0) for site in sites)
