"""The Teams profile on calls: what the edge changes in requests and responses of a dialog with
Microsoft Teams Direct Routing, hosting model (one base ``teams.example.com``, a subdomain per
customer, ``cust42.teams.example.com``, admitted by the wildcard).

Theory of operation.  Microsoft identifies the customer by the FQDN in the first Contact and
takes the next hop from the top Record-Route, then the Contact; both must name that FQDN,
never an address, and the FQDN must be covered by the certificate we present.  The edge stays
stateless: what the way back needs travels in URIs we write and sign.

* **Core → Teams.**  A request from the core whose Request-URI host is a trunk target's
  (``sip.pstnhub.microsoft.com``) is trunk traffic: the customer is the From host, which a
  rule must admit under the trunk's base (else 403, and a host that is no trunk target is no
  trunk traffic: the general rules refuse it, no open relay).  It goes over TLS to the first
  usable target (``trunks.choose``: ``sip`` → ``sip2`` → ``sip3``), with two Record-Routes
  both naming the customer FQDN (the one facing the core carrying Microsoft's flow token),
  the core's Contact rewritten to ``<sip:USER@CUSTOMER:TLSPORT;transport=tls;sz-alias=T>``
  (``T`` the signed flow token of the core's Contact address, as Kamailio's
  ``set_contact_alias`` does) and ``X-MS-SBC`` added.
* **Teams → core.**  A request for a customer FQDN under a Teams trunk's base goes to the
  owning tenant's upstream as any admitted request does; a Request-URI carrying our
  ``sz-alias`` goes back to the address the token names, with the core's URI restored
  (``handle_ruri_alias``).  A token no key of ours signed: 403.  On a dialog-creating
  request, the Record-Route facing the core carries the *way back* (:meth:`way_back`) as its
  flow token: Microsoft's listening address, never the port its connection came from, which
  dies with the connection (a restart of the edge, an idle timeout).  That address is the
  trunk target Microsoft's Record-Route (else Contact) names, else the target the next call
  would take: only configured targets, resolved in the background, never a name a message
  carries.  The core's requests of the dialog go there over TLS, on a connection to it that
  is up, else a new mutual-TLS one.
* **Responses.**  Our Via on requests of these dialogs carries ``sz-teams=ms`` (the request
  went to Microsoft) or ``sz-teams=core`` (it went to the core).  A response toward Microsoft
  gets the customer FQDN in our Record-Route entries and the Contact (with its alias); one
  toward the core gets our core-facing entry back as our address, which the core can reach
  without resolving customer names.
* In-dialog requests from the core whose popped Route names a customer FQDN follow the flow
  token as usual and get the same Contact rewrite.
* **Never ``sips:``, never ``Replaces``** toward Microsoft ("Direct Routing SIP protocol":
  SIPS URIs are not supported; requests with ``Replaces`` are rejected).  Every ``sips:`` URI
  a message toward Microsoft carries is written ``sip:...;transport=tls`` (what the hop
  really is: TLS to Microsoft, whatever came before), ``replaces`` is taken out of
  ``Supported``, and a request carrying ``Replaces`` (or requiring it) is answered ``420
  Bad Extension`` with ``Unsupported: replaces`` rather than forwarded: without the header
  an attended transfer's "replace that call" would reach Teams as a second, unrelated call,
  while a 420 tells the core precisely which extension to do without (RFC 3261 §8.1.3.5).
  Numbers keep their ``+``: user parts are never rewritten.

The splice fast path knows nothing of this: :meth:`TeamsPolicy.declines` sends to the general
path any request whose first line names a Teams base and any response with our mark.  Tokens
are signed with the store's key, so a dialog survives a restart of the edge.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sipzone.model.snapshot import Snapshot
from sipzone.model.trunks import Trunk
from sipzone.sip.memo import Admission, SnapshotMemo
from sipzone.sip.message import (
    MalformedMessage,
    Request,
    is_ip_literal,
    parse_address,
    parse_uri,
    split_addresses,
    uri_host,
)
from sipzone.sip.routing import RouteSet, our_uri, strict_next
from sipzone.sip.trunks import DEFAULT_SBC, TargetHealth, choose
from sipzone.sip.values import Listener, Sends, Target

if TYPE_CHECKING:
    from sipzone.sip.edge import Edge, Incoming, Onward

MARK = b"sz-teams"  # our Via parameter on requests of a Teams dialog
TO_MS, TO_CORE = b"ms", b"core"
ALIAS = b"sz-alias"  # Contact parameter: the core's Contact address, as a signed flow token
_RECORD_ROUTE = b"Record-Route"
REPLACES = b"replaces"  # RFC 3891's option tag, which Microsoft refuses
# A sips: URI in a header value: in <>, or an addr-spec at the start of a list item (which
# cannot hold ';', ',' or '?': they would be header syntax, RFC 3261 §20).
_SIPS_URI = re.compile(rb"<(sips:[^>]*)>|(^|,[ \t]*)(sips:[^;,?\s]*)", re.IGNORECASE)
_TRANSPORT_PARAM = re.compile(rb";transport=[^;?]*", re.IGNORECASE)
Rewrite = Callable[[bytes, bytes], "bytes | None"]  # (key, value) -> value, None: dropped


class TeamsPolicy:
    """The Teams profile for one edge; indexes each snapshot's trunks once."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        # (trunk, target) -> health, the prober's (one worker probes; the others see none and
        # take the first target).
        self.health: Mapping[tuple[str, str], TargetHealth] = {}
        self._snapshot: Snapshot | None = None
        self._bases: tuple[bytes, ...] = ()  # b".teams.example.com" per Teams trunk
        self._pattern = re.compile(b"(?!)")  # any of them, in a request's first line
        self._teams: tuple[Trunk, ...] = ()
        self._by_host: dict[bytes, tuple[Trunk, str]] = {}  # target host (lower) -> trunk, URI

    def _index(self, snapshot: Snapshot) -> None:
        if snapshot is self._snapshot:
            return
        upstreams = self.edge.upstreams
        by_host: dict[bytes, tuple[Trunk, str]] = {}
        for trunk in snapshot.trunks:
            for uri in trunk.targets:
                target = upstreams.target(uri)
                if target is not None:
                    by_host.setdefault(target.host.lower().encode(), (trunk, uri))
        self._teams = tuple(t for t in snapshot.trunks if t.teams)
        self._bases = tuple(b"." + t.base.encode() for t in self._teams)
        self._pattern = re.compile(b"|".join(map(re.escape, self._bases)), re.IGNORECASE)
        self._by_host = by_host
        self._snapshot = snapshot

    def declines(self, data: bytes, memo: SnapshotMemo) -> bool:
        """Whether the fast paths must leave this message to the general path (called for
        every message they see: without Teams trunks it costs an identity check)."""
        if memo.snapshot is not self._snapshot:
            self._index(memo.snapshot)
        bases = self._bases
        if not bases:
            return False
        first = data.find(b"\r\n", 0, 1024)
        if data[:8] == b"SIP/2.0 ":  # our Via, marked, has the top line below the status
            return data.find(MARK, first, data.find(b"\r\n", first + 2)) > 0
        return self._pattern.search(data, 0, first) is not None

    def _customer(self, host: bytes | None, memo: SnapshotMemo) -> tuple[Trunk, Admission] | None:
        """The Teams trunk and admission of ``host`` when it is a customer FQDN: admitted, and
        below a Teams trunk's base."""
        if not host or is_ip_literal(host):
            return None
        admission = memo.admit(host)
        if admission is None:
            return None
        name = "." + admission.name
        trunk = next((t for t in self._teams if name.endswith("." + t.base)), None)
        return (trunk, admission) if trunk is not None else None

    # -- requests from the core ----------------------------------------------------------------

    def from_core(
        self, incoming: Incoming, route: RouteSet, flow: Target | None, memo: SnapshotMemo
    ) -> Sends | None:
        """What goes out for a request from the core in a Teams dialog; None when it is none
        (the general rules apply)."""
        self._index(memo.snapshot)
        if not self._by_host:
            return None
        edge = self.edge
        request = incoming.request
        if flow is not None:  # in-dialog: the popped Route names the customer
            found = next(
                (c for u in route.popped if (c := self._customer(u.host, memo)) is not None), None
            )
            if found is None:
                return None
            if _offers_replaces(request):
                return edge.unsupported(incoming, REPLACES)
            uri, routes = route.uri, route.routes
            if routes:
                uri, routes = strict_next(uri, routes)
            rewrite = self._toward_ms(found[1].name.encode(), memo)
            routes = [no_sips(r) for r in routes]
            return edge.forward(incoming, _onward(flow, uri, routes, b"", b"", rewrite), memo)
        if route.routes:
            return None
        by_host = self._by_host.get((uri_host(route.uri) or b"").lower())
        if by_host is None:
            return None
        trunk = by_host[0]
        from_uri = parse_address(request.fields[b"From"], "From").uri
        customer = self._customer(uri_host(from_uri), memo)
        if customer is None or customer[0] is not trunk:
            return edge.refuse(incoming, "customer_unknown", 403, b"Customer Not Served")
        if _offers_replaces(request):
            return edge.unsupported(incoming, REPLACES)
        name = customer[1].name.encode()
        chosen = choose(trunk, self.health, datetime.now(UTC))
        if chosen is None:
            return edge.refuse(incoming, "trunk_down", 503, b"No Trunk Target Available")
        target = edge.upstreams.address_of(edge.upstreams.target(chosen))
        if target is None:
            return edge.refuse(incoming, "unresolvable", 503, b"Trunk Target Not Resolved")
        head = b""
        if edge.starts_dialog(request):
            token = memo.keys.flow_token(target)
            head = b"%s: %s\r\n%s: %s\r\n" % (
                _RECORD_ROUTE, our_uri(edge.listener_toward(target), host=name),
                _RECORD_ROUTE, our_uri(incoming.arrival.listener, host=name, user=token),
            )  # fmt: skip
        tail = b"X-MS-SBC: %s\r\n" % (trunk.sbc_header or DEFAULT_SBC).encode()
        rewrite = self._toward_ms(name, memo)
        return edge.forward(incoming, _onward(target, route.uri, [], head, tail, rewrite), memo)

    def _toward_ms(self, name: bytes, memo: SnapshotMemo) -> Rewrite:
        """The header rewrite of a request toward Microsoft: the first Contact only, on the
        customer FQDN ``name``; no ``replaces`` in Supported; no sips: anywhere."""
        contacts = 0

        def rewrite(key: bytes, value: bytes) -> bytes | None:
            nonlocal contacts
            if key == b"Contact":
                contacts += 1
                return self.contact(value, name, memo) if contacts == 1 else None
            return toward_ms(key, value)

        return rewrite

    def contact(self, value: bytes, name: bytes, memo: SnapshotMemo) -> bytes:
        """``value``'s first Contact as Microsoft must see it: on ``name`` and our TLS port,
        the original address kept in a signed alias when it is one."""
        address = parse_address(split_addresses(value)[0], "Contact")
        uri = parse_uri(address.uri)
        tls = self.edge.tls_listener()
        user = uri.user + b"@" if uri.user else b""
        alias = b""
        if uri.host and is_ip_literal(uri.host):
            transport = "tls" if uri.scheme == "sips" else uri.transport
            host = uri.host.strip(b"[]").decode()
            flow = Target(transport, host, uri.port or (5061 if transport == "tls" else 5060))
            token = memo.keys.flow_token(flow)
            alias = b";%s=%s" % (ALIAS, token) if token else b""
        return b"<sip:%s%s:%d;transport=tls%s>" % (user, name, tls.port, alias)

    # -- requests toward the core ---------------------------------------------------------------

    def toward_core(
        self,
        request: Request,
        uri: bytes,
        target: Target,
        admission: Admission | None,
        memo: SnapshotMemo,
    ) -> tuple[bytes, Target, bytes, Target | None] | None:
        """For a request from Teams to a customer FQDN: the Request-URI and target (the core's
        own, when our alias names it), the Via mark and, on a dialog-creating request, the
        :meth:`way_back` to Microsoft; None for other requests; a ValueError for an alias we
        did not sign."""
        self._index(memo.snapshot)
        if not self._bases or admission is None:
            return None
        found = self._customer(admission.name.encode(), memo)
        if found is None:
            return None
        back = self.way_back(request, found[0]) if self.edge.starts_dialog(request) else None
        if ALIAS.lower() not in uri.lower():
            return uri, target, TO_CORE, back
        parsed = parse_uri(uri)
        token = parsed.params.get(ALIAS)
        flow = memo.keys.flow(token) if token else None
        if flow is None:
            raise ValueError("forged alias")
        user = parsed.user + b"@" if parsed.user else b""
        hostport = Listener(flow.transport, flow.host, flow.port).sent_by
        suffix = b"" if flow.transport == "udp" else b";transport=" + flow.transport.encode()
        core_uri = b"sip:%s%s%s" % (user, hostport, suffix)
        return core_uri, flow._replace(conn=None), TO_CORE, back

    def way_back(self, request: Request, trunk: Trunk) -> Target | None:
        """Where the core's requests of the dialog ``request`` (from Microsoft) starts go: the
        target of ``trunk`` that Microsoft's Record-Route (else Contact) names, else the one
        the next call would take, as the transport resolved it; None when none resolves."""
        fields = request.fields
        hop = fields.get(_RECORD_ROUTE) or fields.get(b"Contact") or b""
        host = b""
        with contextlib.suppress(MalformedMessage, IndexError):
            host = parse_uri(parse_address(split_addresses(hop)[0]).uri).host.strip(b"[]").lower()
        named = self._by_host.get(host)
        chosen = named[1] if named is not None and named[0] is trunk else None
        if chosen is None:
            chosen = choose(trunk, self.health, datetime.now(UTC))
        upstreams = self.edge.upstreams
        return upstreams.address_of(upstreams.target(chosen)) if chosen is not None else None

    # -- responses -----------------------------------------------------------------------------

    def response_lines(
        self, key: bytes, value: bytes, direction: bytes, memo: SnapshotMemo, name: bytes | None
    ) -> bytes | None:
        """One header value of a response of a Teams dialog as it goes on (None: dropped):
        toward Microsoft (``ms``, the customer FQDN ``name`` in our Record-Routes and
        Contact, and :func:`toward_ms`) or toward the core (``core``, our core-facing
        Record-Route as an address)."""
        if key == _RECORD_ROUTE:
            value = b", ".join(
                self._record_route(rr, direction, memo, name) for rr in split_addresses(value)
            )
        elif key == b"Contact" and direction == TO_MS and name is not None:
            return self.contact(value, name, memo)
        return toward_ms(key, value) if direction == TO_MS else value

    def _record_route(
        self, value: bytes, direction: bytes, memo: SnapshotMemo, name: bytes | None
    ) -> bytes:
        try:
            uri = parse_uri(parse_address(value, "Record-Route").uri)
        except MalformedMessage:
            return value
        listener = self.edge.our_listener(uri, memo)
        if listener is None:
            return value  # not ours
        user = uri.user if uri.user else None
        if direction == TO_MS and name is not None:
            return our_uri(listener, host=name, user=user)
        if direction == TO_CORE and listener.transport != "tls":
            return our_uri(listener, user=user)
        return value

    def response_name(
        self, record_routes: bytes | None, to: bytes, memo: SnapshotMemo
    ) -> bytes | None:
        """The customer FQDN of a response going to Microsoft: from a Record-Route of ours that
        names one, else the To host."""
        hosts = []
        for rr in split_addresses(record_routes or b""):
            try:
                hosts.append(parse_uri(parse_address(rr, "Record-Route").uri).host)
            except MalformedMessage:
                continue
        hosts.append(uri_host(parse_address(to, "To").uri) or b"")
        for host in hosts:
            found = self._customer(host, memo)
            if found is not None:
                return found[1].name.encode()
        return None


def toward_ms(key: bytes, value: bytes) -> bytes | None:
    """A header value (not the Contact) as it may go to Microsoft: ``replaces`` out of
    Supported (None when nothing is left), every ``sips:`` URI written :func:`sip_not_sips`."""
    if key == b"Supported":
        tags = [t for t in (t.strip() for t in value.split(b",")) if t.lower() != REPLACES]
        return b", ".join(tags) if any(tags) else None
    return no_sips(value) if b"sips:" in value.lower() else value


def no_sips(value: bytes) -> bytes:
    """A header value with each ``sips:`` URI :func:`sip_not_sips`; an addr-spec becomes a
    name-addr, so that the new parameter stays the URI's and its header parameters (a tag)
    stay the header's."""

    def one(match: re.Match[bytes]) -> bytes:
        if match[1] is not None:
            return b"<" + sip_not_sips(match[1]) + b">"
        return match[2] + b"<" + sip_not_sips(match[3]) + b">"

    return _SIPS_URI.sub(one, value)


def sip_not_sips(uri: bytes) -> bytes:
    """``sips:X`` as Microsoft takes it, ``sip:X;transport=tls``: what the hop to Microsoft is
    (the end-to-end promise of sips:, RFC 5630, is one Microsoft does not take); other URIs
    unchanged.  The user part (``+4930...``) is never touched."""
    if uri[:5].lower() != b"sips:":
        return uri
    rest, mark, headers = uri[5:].partition(b"?")
    return b"sip:" + _TRANSPORT_PARAM.sub(b"", rest) + b";transport=tls" + mark + headers


def _offers_replaces(request: Request) -> bool:
    """Whether ``request`` carries ``Replaces`` or requires it (RFC 3891)."""
    fields = request.fields
    require = fields.get(b"Require")
    return b"Replaces" in fields or (
        require is not None and REPLACES in (t.strip().lower() for t in require.split(b","))
    )


def _onward(
    target: Target, uri: bytes, routes: list[bytes], head: bytes, tail: bytes, rewrite: Rewrite
) -> Onward:
    """A request's way on toward Microsoft (no sips: Request-URI), our Via marked so its
    responses come back here."""
    from sipzone.sip.edge import Onward  # edge.py imports this module

    return Onward(target, sip_not_sips(uri), routes, head, tail, rewrite, TO_MS)
