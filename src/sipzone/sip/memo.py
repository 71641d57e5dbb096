"""What the edge works out from the current snapshot and keeps while it is current: who owns a
host, the OPTIONS answer tails and keep-alive templates, this site, the core's addresses and
the signing keys.

The edge builds one :class:`SnapshotMemo` per snapshot (and per set of upstream choices the
background worked out) and replaces it whole when either changes: nothing in it is ever reset
piecemeal, so nothing in it can outlive what it was worked out from.  :class:`Upstreams`, which
does not depend on a snapshot (a URI parses the same way under any), lives beside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from sipzone.model.names import lookup_key
from sipzone.model.snapshot import Site, Snapshot
from sipzone.model.tenancy import TenantView
from sipzone.sip import SipConfig
from sipzone.sip.choice import Choice
from sipzone.sip.message import (
    URI,
    MalformedMessage,
    default_port,
    is_ip_literal,
    parse_address,
    parse_uri,
    uri_host,
)
from sipzone.sip.signing import Keys
from sipzone.sip.values import Listener, Target

if TYPE_CHECKING:
    from sipzone.sip.keepalive import Declined, Learnt, Peer, PeerKey
    from sipzone.sip.splice import Plan

_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")
MEMO_CAP = 65536  # entries one memo table holds before it starts over (peers choose the keys)


class Admission(NamedTuple):
    """A host the snapshot admits: the matched name and the tenant owning the rule."""

    name: str  # the matched FQDN, A-label, lower case
    tenant: TenantView


def requested_host(host: bytes | None, to: bytes) -> bytes:
    """The host a request is for: ``host`` (its Request-URI's), or the To header's when the
    Request-URI names no host (tel:) or an address (a phone dialling the edge's IP names no
    domain, but still fills in the To).  The one rule the general and the keep-alive path
    share; b"" when neither names one."""
    if host and not is_ip_literal(host):
        return host
    return uri_host(parse_address(to, "To").uri) or b""


class Upstreams:
    """The configured upstream URIs as targets (each parsed once) and where each sends now:
    the :class:`~sipzone.sip.choice.Choice` the background worked out from what it located
    and probed (``health/upstreams.py``)."""

    def __init__(self) -> None:
        self._parsed: dict[str, Target | None] = {}
        self.choices: Mapping[str, Choice] = {}  # by configured URI
        self.resolved: Mapping[str, str] = {}  # a configured URI's host name -> its address now
        # Every located address -> the host name of the URI it was located for: what a TLS
        # upstream's certificate must name (RFC 5922 §4: the URI's domain, not the SRV target).
        self.names: Mapping[str, str] = {}

    def set_choices(self, choices: Mapping[str, Choice]) -> None:
        """Where each configured URI sends now (by URI), and so its host name's address."""
        self.choices = dict(choices)
        resolved: dict[str, str] = {}
        names: dict[str, str] = {}
        for uri, choice in self.choices.items():
            target = self.target(uri)
            if target is not None and not is_ip_literal(target.host):
                resolved.setdefault(target.host, choice.first.host)
                for address, _ in choice.known:
                    names.setdefault(address, target.host)
        self.resolved, self.names = resolved, names

    def choice(self, uri: str) -> Choice | None:
        """Where ``uri``'s requests go now: as located and probed, else (not located yet) an
        address as written; None when it is no usable URI or a name not located yet."""
        choice = self.choices.get(uri)
        if choice is not None:
            return choice
        target = self.target(uri)
        return Choice.of(target) if target is not None and is_ip_literal(target.host) else None

    def target(self, uri: str) -> Target | None:
        """Where ``uri`` sends requests, or None when it is not a usable sip:/sips: URI."""
        if uri in self._parsed:
            return self._parsed[uri]
        target = None
        try:
            parsed = parse_uri(uri.encode())
            if parsed.scheme in ("sip", "sips") and parsed.host:
                transport = "tls" if parsed.scheme == "sips" else parsed.transport
                if transport in ("udp", "tcp", "tls"):
                    host = parsed.host.strip(b"[]").decode("ascii")
                    target = Target(transport, host, parsed.port or default_port(transport))
        except (MalformedMessage, UnicodeDecodeError):
            target = None
        if len(self._parsed) >= MEMO_CAP:
            self._parsed.clear()
        self._parsed[uri] = target
        return target

    def address_of(self, target: Target | None) -> Target | None:
        """``target`` with its host as an address: as written, or as located for a configured
        URI's host name; None for any other name (never a lookup for a peer)."""
        if target is None or is_ip_literal(target.host):
            return target
        address = self.resolved.get(target.host)
        return target._replace(host=address) if address is not None else None

    def uris(self, snapshot: Snapshot, site: Site | None) -> set[str]:
        """The upstreams configured in ``snapshot``: every tenant's and ``site``'s."""
        uris = {t.upstream for t in snapshot.tenants.views.values() if t.upstream}
        if site is not None and site.upstream:
            uris.add(site.upstream)
        return uris

    def core(self, snapshot: Snapshot, site: Site | None) -> frozenset[tuple[str, int]]:
        """(address, port) of every target the configured upstreams located to, healthy or
        not, and of those written as addresses: requests from there come from the core."""
        core: set[tuple[str, int]] = set()
        for uri in self.uris(snapshot, site):
            choice = self.choice(uri)
            if choice is not None:
                core |= choice.known
        return frozenset(core)


def site_of(snapshot: Snapshot, wanted: str | None) -> Site | None:
    """The site this edge runs at: the configured one, else the first."""
    if not snapshot.sites:
        return None
    site = next((s for s in snapshot.sites if s.name == wanted), None)
    if site is None and wanted is None:
        site = snapshot.sites[0]
    return site


class SnapshotMemo:
    """Everything the edge remembers about one snapshot; replaced whole, never reset."""

    __slots__ = (
        "_config",
        "admissions",
        "callers",
        "core",
        "keepalive_peers",
        "keepalive_templates",
        "keys",
        "options_tails",
        "our_routes",
        "site",
        "snapshot",
        "splice_heads",
        "splice_plans",
        "splice_routes",
        "tenant_values",
    )

    def __init__(
        self, snapshot: Snapshot, config: SipConfig, upstreams: Upstreams, keys: Keys
    ) -> None:
        self.snapshot = snapshot
        self._config = config
        self.site = site_of(snapshot, config.site)
        self.keys = keys
        self.core = upstreams.core(snapshot, self.site)  # requests from there: the core's
        self.admissions: dict[bytes, Admission | None] = {}  # by host as written
        self.options_tails: dict[tuple[str, str, int], bytes] = {}
        # Filled by routing.py: per Route value, its URI when it names us, else None.
        self.our_routes: dict[bytes, URI | None] = {}
        self.callers: dict[bytes, Admission | None] = {}  # by From value up to its tag
        self.tenant_values: dict[str, bytes] = {}  # by tenant name
        # Filled by the keep-alive path: its answer per (Request-URI, To, listener), and
        # what it learnt per peer (keepalive.Peer).
        self.keepalive_templates: dict[tuple[bytes, bytes, str, int], Learnt] = {}
        self.keepalive_peers: dict[PeerKey, Peer | Declined] = {}
        # Filled by the proxied-message path (splice.py): its decision per (host, From up to
        # its tag), the Record-Route pair per (phone, our listener, name), the Route values
        # found to name us only.
        self.splice_plans: dict[tuple[bytes, bytes], Plan | None] = {}
        self.splice_heads: dict[tuple[object, ...], bytes] = {}
        self.splice_routes: dict[bytes, bool] = {}  # Route values (joined) that are ours only

    def admit(self, host: bytes) -> Admission | None:
        """Who owns ``host`` (as written in a URI: any case, perhaps a trailing dot or UTF-8),
        or None when no rule admits it."""
        admissions = self.admissions
        if host in admissions:
            return admissions[host]
        try:
            key = lookup_key(host.decode("utf-8"))
        except UnicodeDecodeError:
            key = ""
        tenant = self.snapshot.matcher.owner(key) if key else None
        admission = Admission(key, tenant) if tenant is not None else None
        if len(admissions) >= MEMO_CAP:
            admissions.clear()
        admissions[host] = admission
        return admission

    def caller(self, from_value: bytes) -> Admission | None:
        """Who owns the name in a From value (the caller's tenant), or None: no name we serve.
        Memoised by the value up to its tag, which repeats from call to call of one user."""
        key = from_value.rpartition(b";tag=")[0] or from_value
        callers = self.callers
        if key in callers:
            return callers[key]
        host = uri_host(parse_address(from_value, "From").uri)
        admission = self.admit(host) if host and not is_ip_literal(host) else None
        if len(callers) >= MEMO_CAP:
            callers.clear()
        callers[key] = admission
        return admission

    def tenant_value(self, tenant: TenantView) -> bytes:
        """What our tenant headers say for ``tenant``: its name, printable ASCII only (the
        store validates names; a header value must never carry CR or LF whatever it holds)."""
        value = self.tenant_values.get(tenant.name)
        if value is None:
            value = self.tenant_values[tenant.name] = _UNPRINTABLE.sub(b"", tenant.header_value)
        return value

    def upstream_of(self, tenant: TenantView) -> str | None:
        """The upstream URI ``tenant``'s requests go to: its own (inherited), else the site's."""
        return tenant.upstream or (self.site.upstream if self.site else None)

    def options_tail(self, name: str, listener: Listener) -> bytes:
        """What follows CSeq in our 200 to an OPTIONS for ``name`` on ``listener``: Allow,
        Accept, Supported and a Contact holding the name (Teams wants a name, never an
        address), then the end of the message."""
        key = (name, listener.transport, listener.port)
        tail = self.options_tails.get(key)
        if tail is None:
            cfg = self._config
            tail = (
                f"Allow: {', '.join(cfg.allow)}\r\n"
                "Accept: application/sdp\r\n"
                f"Supported: {', '.join(cfg.supported)}\r\n"
                f"Contact: <sip:{name}:{listener.port};transport={listener.transport}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            if len(self.options_tails) >= MEMO_CAP:
                self.options_tails.clear()
            self.options_tails[key] = tail
        return tail
