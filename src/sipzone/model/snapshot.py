"""An immutable view of one store revision: everything the SIP edge and the DNS need.

Services hold a reference to the current snapshot and swap it atomically when a newer revision
arrives; work in flight finishes on the snapshot it started with.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sipzone.model.matcher import Match, Matcher
from sipzone.model.names import lookup_key
from sipzone.model.tenancy import TenancyTree, TenantView

TRANSPORTS = ("udp", "tcp", "tls")
# A site's SIP port per transport; 0 means the site does not offer that transport, and the DNS
# publishes no SRV or NAPTR for it.  No TLS unless a port is given: nothing serves it yet.
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"udp": 5060, "tcp": 5060, "tls": 0})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    @property
    def vips4(self) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(a for a in self.vips if isinstance(a, ipaddress.IPv4Address))

    @property
    def vips6(self) -> tuple[ipaddress.IPv6Address, ...]:
        return tuple(a for a in self.vips if isinstance(a, ipaddress.IPv6Address))


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
    settings: Mapping[str, str] = field(default_factory=dict)
    delta: Delta | None = None

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
        )

    @classmethod
    def empty(cls) -> Snapshot:
        return cls.build(0, TenancyTree([]), [])

    def check(self, host: str) -> Match[TenantView] | None:
        """Is ``host`` (as written anywhere: any case, trailing dot, U-labels) admitted?"""
        return self.matcher.match(lookup_key(host))

    def zone_of(self, name: str) -> str | None:
        """The longest zone we are authoritative for that holds ``name``, or None."""
        best = None
        for zone in self.zones:
            if (name == zone or name.endswith("." + zone)) and (
                best is None or len(zone) > len(best)
            ):
                best = zone
        return best


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
