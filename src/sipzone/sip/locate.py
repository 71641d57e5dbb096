"""Locating a configured upstream's servers as RFC 3263 §4 says: NAPTR, then SRV, then A/AAAA,
with the TTL of what was found.  Run in the background only (``health/upstreams.py``), for
configured URIs only: nothing a peer sends reaches this module.

* The transport is the URI's ``transport`` parameter (TLS for ``sips:``); without one, a
  host that is an address or a URI with a port takes UDP (TLS for ``sips:``, §4.1); else the
  NAPTR records of the host choose it, the lowest order and preference among the services
  we speak (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``; ``sips:`` keeps only the last), and name
  the SRV owner; with no NAPTR, the first of ``_sip._udp``, ``_sip._tcp``, ``_sips._tcp``
  that has SRV records does.
* The port is the URI's; an address or a written port skips NAPTR and SRV (§4.2).  Else each
  SRV record's target and port (a target of ``.``: the service is not offered there), and
  with no SRV record at all the host itself on the transport's default port.
* Addresses are A and AAAA.  With the system's name servers (no ``--upstream-dns``), a name
  the DNS does not know is asked of the system's resolver too (getaddrinfo: /etc/hosts, as
  every other program on the host sees it), with :data:`HOSTS_TTL`.  A name pinned with
  ``--sip-host NAME=ADDRESS`` is that address and nothing else.

The TTL returned is the least of every record set the answer depends on; the caller holds it
between :data:`MIN_TTL` and :data:`MAX_TTL`.  A failure to get an answer at all (time-out,
SERVFAIL, no server) raises :class:`LocateFailed`, so the caller keeps what it had; an answer
that says "no such records" is a valid answer with no hops.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from sipzone.sip.choice import Hop
from sipzone.sip.message import MalformedMessage, default_port, is_ip_literal, parse_uri
from sipzone.sip.values import Target

LOCATE_TIMEOUT = 5.0  # seconds for the whole of one URI's lookups
QUERY_TIMEOUT = 1.5  # seconds for one query (retries to every name server included)
MIN_TTL = 5.0  # seconds: a TTL of 0 must not turn the background into a busy loop
MAX_TTL = 3600.0  # seconds: a record set cached for days is still looked at hourly
HOSTS_TTL = 60.0  # seconds an address from the system's resolver (no TTL known) is kept
NAPTR_SERVICES = {b"sip+d2u": "udp", b"sip+d2t": "tcp", b"sips+d2t": "tls"}
SRV_OWNERS = (("_sip._udp.", "udp"), ("_sip._tcp.", "tcp"), ("_sips._tcp.", "tls"))  # §4.1
_FAMILIES = {"A": socket.AF_INET, "AAAA": socket.AF_INET6}
_NOTHING = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)  # answers, saying "none"


class LocateFailed(Exception):
    """No answer at all for a lookup an upstream depends on: keep what was located before."""


class Location(NamedTuple):
    """What one URI located to: its hops and the seconds they may be kept."""

    hops: tuple[Hop, ...]
    ttl: float


class Locator:
    """Locates URIs through one resolver: the name servers given (``HOST:PORT`` pairs), else
    the system's configuration; ``pins`` are names fixed to an address."""

    def __init__(
        self,
        servers: Sequence[tuple[str, int]] = (),
        pins: Iterable[tuple[str, str]] = (),
        families: tuple[str, ...] = ("A", "AAAA"),
    ) -> None:
        self.system = not servers
        self.pins = dict(pins)
        self.families = families  # the address records asked for, in this order
        if servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)  # hosts file only
        resolver.cache = None  # TTLs are ours to follow: each lookup asks
        # One query's time, so that a DNS that does not answer leaves time for the hosts file.
        resolver.lifetime = QUERY_TIMEOUT
        self._resolver = resolver

    async def locate(self, uri: str) -> Location:
        """The hops of ``uri`` (a sip:/sips: URI), in DNS order; ValueError when it is no
        such URI, :class:`LocateFailed` when the DNS gave no answer."""
        try:
            parsed = parse_uri(uri.encode())
        except MalformedMessage as exc:
            raise ValueError(f"{uri!r}: {exc}") from None
        if parsed.scheme not in ("sip", "sips") or not parsed.host:
            raise ValueError(f"{uri!r} is not a sip: or sips: URI")
        host = parsed.host.strip(b"[]").decode("ascii", "replace")
        secure = parsed.scheme == "sips"
        given = parsed.params.get(b"transport")
        transport = "tls" if secure else given.decode("ascii", "replace").lower() if given else None
        try:
            async with asyncio.timeout(LOCATE_TIMEOUT):
                return await self._locate(host, parsed.port, transport, secure)
        except TimeoutError:
            raise LocateFailed(f"{host}: no answer within {LOCATE_TIMEOUT:g} s") from None

    async def _locate(
        self, host: str, port: int | None, transport: str | None, secure: bool
    ) -> Location:
        if is_ip_literal(host) or host in self.pins or port is not None:
            transport = transport or ("tls" if secure else "udp")
            return await self._addresses(host, transport, port or default_port(transport), 0, 0)
        ttl = MAX_TTL
        owners = [
            (prefix + host, service)
            for prefix, service in SRV_OWNERS
            if (transport is None or service == transport) and (service == "tls" or not secure)
        ]
        if transport is None:
            found = await self._naptr(host, secure)
            if found is not None:
                owners, ttl = [found[0]], found[1]
        for owner, service in owners:
            try:
                answer = await self._resolver.resolve(owner + ".", "SRV")
            except _NOTHING:
                continue
            except dns.exception.DNSException as exc:
                raise LocateFailed(f"SRV {owner}: {exc}") from None
            if answer.rrset is not None:
                ttl = min(ttl, float(answer.rrset.ttl))
            located = await asyncio.gather(
                *(
                    self._addresses(
                        r.target.to_text(omit_final_dot=True), service, r.port, r.priority, r.weight
                    )
                    for r in answer
                    if r.target != dns.name.root  # "." : not offered there
                )
            )
            hops = tuple(hop for location in located for hop in location.hops)
            return Location(hops, min([ttl, *(location.ttl for location in located)]))
        fallback = owners[0][1] if len(owners) == 1 else transport or ("tls" if secure else "udp")
        location = await self._addresses(host, fallback, default_port(fallback), 0, 0)
        return Location(location.hops, min(ttl, location.ttl))

    async def _naptr(self, host: str, secure: bool) -> tuple[tuple[str, str], float] | None:
        """The (SRV owner, transport) the host's NAPTR records prefer and their TTL; None
        when it has none we can use."""
        try:
            answer = await self._resolver.resolve(host + ".", "NAPTR")
        except _NOTHING:
            return None
        except dns.exception.DNSException as exc:
            raise LocateFailed(f"NAPTR {host}: {exc}") from None
        usable = []
        for record in answer:
            service = NAPTR_SERVICES.get(record.service.lower())
            if record.flags.lower() != b"s" or service is None or (secure and service != "tls"):
                continue
            usable.append((record.order, record.preference, record.replacement, service))
        if not usable:
            return None
        _, _, replacement, service = min(usable, key=lambda u: (u[0], u[1]))
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else MAX_TTL
        return (replacement.to_text(omit_final_dot=True), service), ttl

    async def _addresses(
        self, host: str, transport: str, port: int, priority: int, weight: int
    ) -> Location:
        """A hop per address of ``host`` (A, then AAAA, asked together)."""
        if is_ip_literal(host) or host in self.pins:
            address = self.pins.get(host, host)
            hop = Hop(Target(transport, address, port), priority, weight, host)
            return Location((hop,), MAX_TTL)
        found: list[str] = []
        ttl = MAX_TTL
        answered = False
        failure: BaseException | None = None
        answers = await asyncio.gather(
            *(self._resolver.resolve(host + ".", rdtype) for rdtype in self.families),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, _NOTHING):
                answered = True
            elif isinstance(answer, dns.exception.DNSException):
                failure = answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                answered = True
                if answer.rrset is not None:
                    ttl = min(ttl, float(answer.rrset.ttl))
                found.extend(r.address for r in answer)
        if not found and self.system:
            found, ttl = await self._system(host), HOSTS_TTL
            answered = answered or bool(found)
        if not answered:
            raise LocateFailed(f"{host}: {failure}")
        hops = tuple(Hop(Target(transport, a, port), priority, weight, host) for a in found)
        return Location(hops, ttl)

    async def _system(self, host: str) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError:
            return []
        wanted = {_FAMILIES[rdtype] for rdtype in self.families}
        return list(dict.fromkeys(str(i[4][0]) for i in infos if i[0] in wanted))
