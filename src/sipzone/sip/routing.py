"""How a request finds its next hop through the edge: our Route entries popped (RFC 3261 §16.4,
both of them under double record-routing, RFC 5658), a strict router's Request-URI repaired, a
strict router ahead served (§16.6 step 6), and what a Route may name.

Rules, in the order the edge applies them:

* A request whose Request-URI is a URI we record-routed (ours, with ``lr``) and that carries a
  Route came from a strict router: the last Route becomes the Request-URI again (§16.4).
* Route entries naming us are popped from the top: one, or the two we record when the sides
  differ.  A Route names us by host AND port of a listener (the scheme's default port when it
  names none), or by a name we serve with no port or one of our listeners' ports.
* An entry of ours popped may carry a flow token (``signing.py``): on a request from the core
  the first one names the phone it goes to (:meth:`Routing.flow`), and one that no key of
  ours signed makes the request forged (refused, never followed).  A phone's requests go to
  the core whatever tokens they carry: they are not read.
* What a Route left after ours may name is :func:`Routing.classify`'s: us again (a spiral
  through a core that does not record-route), a configured upstream, or anything else.  A
  request from outside (a phone) goes to a configured upstream only, never to a host a peer
  names; the core may name any address.

What the edge records is :func:`our_uri`'s: double record-routing (RFC 5658) with one entry
facing each side, the one facing the core an address (the core resolves no customer names)
carrying the phone's flow; on a REGISTER the same URI as the Path (RFC 3327).
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from sipzone.sip.memo import MEMO_CAP, SnapshotMemo, Upstreams
from sipzone.sip.message import (
    URI,
    MalformedMessage,
    Request,
    default_port,
    is_ip_literal,
    parse_address,
    parse_uri,
    split_addresses,
)
from sipzone.sip.signing import FLOW_PREFIX
from sipzone.sip.values import Listener, Target

OURS_PER_PASS = 2  # Route entries of ours one pass pops: both under double record-routing


class RouteSet(NamedTuple):
    """A request's routing once ours are taken out: the Request-URI to send (a strict router's
    repaired), the Route values left, and the URIs of ours popped (a strict router's
    Request-URI first)."""

    uri: bytes
    routes: list[bytes]
    popped: tuple[URI, ...] = ()


class Forged(enum.Enum):
    """A flow token in a URI of ours that no key of ours signed."""

    FORGED = "forged"


FORGED: Final = Forged.FORGED


class Hop(enum.Enum):
    """What the first Route left after ours names."""

    OURS = "ours"  # us again: a spiral through the core
    UPSTREAM = "upstream"  # a configured upstream (the core's own Record-Route)
    FOREIGN = "foreign"  # anything else


class Routing:
    """Route sets and next hops for one edge: knows its listeners, asks the memo which names it
    serves and ``upstreams`` which addresses are the core's."""

    def __init__(self, listeners: list[Listener], upstreams: Upstreams) -> None:
        self._ours = frozenset((lst.host, lst.port) for lst in listeners)
        self._our_ports = frozenset(lst.port for lst in listeners)
        self._upstreams = upstreams

    def route_set(self, request: Request, memo: SnapshotMemo) -> RouteSet:
        """The request's route set with our entries popped (see the module docstring)."""
        value = request.fields.get(b"Route")
        if not value:
            return RouteSet(request.uri, [])
        routes = split_addresses(value)
        uri = request.uri
        popped: list[URI] = []
        own_uri = self._parse(uri) if b";lr" in uri.lower() else None  # what we record has lr
        if own_uri is not None and b"lr" in own_uri.params and self.is_us(own_uri, memo):
            # A strict router sent us our own record-routed URI (§16.4): undo its rewrite.
            popped.append(own_uri)
            uri = parse_address(routes.pop(), "Route").uri
        while routes and len(popped) < OURS_PER_PASS:
            first = self._route_of_ours(routes[0], memo)
            if first is None:
                break
            popped.append(first)
            del routes[0]
        return RouteSet(uri, routes, tuple(popped))

    def _route_of_ours(self, route: bytes, memo: SnapshotMemo) -> URI | None:
        """The URI of a Route value when it names us, else None; memoised per snapshot, since
        a dialog's requests (and a phone's dialogs) carry the same values again and again."""
        known = memo.our_routes
        if route in known:
            return known[route]
        uri = self._parse(parse_address(route, "Route").uri)
        ours = uri if uri is not None and self.is_us(uri, memo) else None
        if len(known) >= MEMO_CAP:
            known.clear()
        known[route] = ours
        return ours

    @staticmethod
    def flow(route: RouteSet, memo: SnapshotMemo) -> Target | Forged | None:
        """The flow the first token among our popped entries names; FORGED when any token
        there is not one a key of ours signed; None when they carry none."""
        flow = None
        for ours in route.popped:
            if ours.user is not None and ours.user.startswith(FLOW_PREFIX):
                named = memo.keys.flow(ours.user)
                if named is None:
                    return FORGED
                flow = flow or named
        return flow

    def is_us(self, uri: URI, memo: SnapshotMemo) -> bool:
        """Whether a sip:/sips: URI names this edge: host AND port of one of our listeners (the
        scheme's default port when none is written), or a name we serve with no port or one
        of our listeners' ports."""
        if uri.scheme not in ("sip", "sips"):
            return False
        host = uri.host.strip(b"[]").decode("utf-8", "replace")
        if (host, uri.port or default_port(uri.scheme)) in self._ours:
            return True
        if uri.port is not None and uri.port not in self._our_ports:
            return False
        return not is_ip_literal(uri.host) and memo.admit(uri.host) is not None

    def classify(self, route: bytes, memo: SnapshotMemo) -> tuple[Hop, Target | None]:
        """What a Route value names, and for a configured upstream where it sends to."""
        uri = self._parse(parse_address(route, "Route").uri)
        if uri is None:
            return Hop.FOREIGN, None
        if self.is_us(uri, memo):
            return Hop.OURS, None
        target = self.target(uri)
        if target is not None and (target.host, target.port) in memo.core:
            return Hop.UPSTREAM, target
        return Hop.FOREIGN, None

    def target(self, uri: URI) -> Target | None:
        """Where ``uri`` sends to: its host as an address, or as resolved when it is a
        configured upstream's name; None for any other name (never a lookup for a peer)."""
        host = uri.host.strip(b"[]").decode("utf-8", "replace")
        transport = "tls" if uri.scheme == "sips" else uri.transport
        hop = Target(transport, host, uri.port or default_port(transport))
        return self._upstreams.address_of(hop)

    @staticmethod
    def _parse(text: bytes) -> URI | None:
        try:
            return parse_uri(text)
        except MalformedMessage:
            return None


def our_uri(listener: Listener, host: bytes | None = None, user: bytes | None = None) -> bytes:
    """A URI of ours as we record it, ``<sip:[USER@]HOST:PORT;transport=T;lr>``: HOST a name we
    serve, else the listener's address; port and transport always written, so that whoever
    routes through it needs neither NAPTR nor SRV (and the core no name at all)."""
    hostport = host + b":%d" % listener.port if host else listener.sent_by
    userinfo = user + b"@" if user else b""
    return b"<sip:%s%s;transport=%s;lr>" % (userinfo, hostport, listener.transport.encode())


def strict_next(uri: bytes, routes: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The Request-URI and Route to send when the next hop is ``routes[0]``: unchanged for a
    loose router (``lr``); for a strict one its URI becomes the Request-URI and the old
    Request-URI the last Route (RFC 3261 §16.6 step 6)."""
    next_uri = parse_address(routes[0], "Route").uri
    try:
        loose = b"lr" in parse_uri(next_uri).params
    except MalformedMessage:
        loose = True  # not ours to repair; the hop was classified on it already
    if loose:
        return uri, routes
    return next_uri, [*routes[1:], b"<" + uri + b">"]
