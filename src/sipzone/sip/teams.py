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
  ``set_contact_alias`` does), ``X-MS-SBC`` added and ``Replaces`` dropped.
* **Teams → core.**  A request for a customer FQDN under a Teams trunk's base goes to the
  owning tenant's upstream as any admitted request does; a Request-URI carrying our
  ``sz-alias`` goes back to the address the token names, with the core's URI restored
  (``handle_ruri_alias``).  A token no key of ours signed: 403.
* **Responses.**  Our Via on requests of these dialogs carries ``sz-teams=ms`` (the request
  went to Microsoft) or ``sz-teams=core`` (it went to the core).  A response toward Microsoft
  gets the customer FQDN in our Record-Route entries and the Contact (with its alias); one
  toward the core gets our core-facing entry back as our address, which the core can reach
  without resolving customer names.
* In-dialog requests from the core whose popped Route names a customer FQDN follow the flow
  token as usual and get the same Contact rewrite.

The splice fast path knows nothing of this: :meth:`TeamsPolicy.declines` sends to the general
path any request whose first line names a Teams base and any response with our mark.  Tokens
are signed with the store's key, so a dialog survives a restart of the edge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
        self._by_host: dict[bytes, Trunk] = {}  # target host (lower case) -> trunk

    def _index(self, snapshot: Snapshot) -> None:
        if snapshot is self._snapshot:
            return
        upstreams = self.edge.upstreams
        by_host: dict[bytes, Trunk] = {}
        for trunk in snapshot.trunks:
            for uri in trunk.targets:
                target = upstreams.target(uri)
                if target is not None:
                    by_host.setdefault(target.host.lower().encode(), trunk)
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
            uri, routes = route.uri, route.routes
            if routes:
                uri, routes = strict_next(uri, routes)
            replace = self._contact_toward_ms(request, found[1].name.encode(), memo)
            return edge.forward(incoming, _onward(flow, uri, routes, b"", b"", replace), memo)
        if route.routes:
            return None
        trunk = self._by_host.get((uri_host(route.uri) or b"").lower())
        if trunk is None:
            return None
        from_uri = parse_address(request.fields[b"From"], "From").uri
        customer = self._customer(uri_host(from_uri), memo)
        if customer is None or customer[0] is not trunk:
            return edge.refuse(incoming, "customer_unknown", 403, b"Customer Not Served")
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
        replace = self._contact_toward_ms(request, name, memo)
        return edge.forward(incoming, _onward(target, route.uri, [], head, tail, replace), memo)

    def _contact_toward_ms(
        self, request: Request, name: bytes, memo: SnapshotMemo
    ) -> dict[bytes, bytes | None]:
        """Header changes toward Microsoft: the first Contact only, on the customer FQDN; no
        Replaces, no sips:."""
        replace: dict[bytes, bytes | None] = {b"Replaces": None}
        contact = request.fields.get(b"Contact")
        if contact:
            replace[b"Contact"] = self.contact(contact, name, memo)
        return replace

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
        self, uri: bytes, target: Target, admission: Admission | None, memo: SnapshotMemo
    ) -> tuple[bytes, Target, bytes] | None:
        """For a request from Teams to a customer FQDN: the Request-URI and target (the core's
        own, when our alias names it) and the Via mark; None for other requests; a ValueError
        for an alias we did not sign."""
        self._index(memo.snapshot)
        if not self._bases or admission is None:
            return None
        if self._customer(admission.name.encode(), memo) is None:
            return None
        if ALIAS.lower() not in uri.lower():
            return uri, target, TO_CORE
        parsed = parse_uri(uri)
        token = parsed.params.get(ALIAS)
        flow = memo.keys.flow(token) if token else None
        if flow is None:
            raise ValueError("forged alias")
        user = parsed.user + b"@" if parsed.user else b""
        hostport = Listener(flow.transport, flow.host, flow.port).sent_by
        suffix = b"" if flow.transport == "udp" else b";transport=" + flow.transport.encode()
        return b"sip:%s%s%s" % (user, hostport, suffix), flow._replace(conn=None), TO_CORE

    # -- responses -----------------------------------------------------------------------------

    def response_lines(
        self, key: bytes, value: bytes, direction: bytes, memo: SnapshotMemo, name: bytes | None
    ) -> bytes:
        """One header value of a response of a Teams dialog as it goes on: toward Microsoft
        (``ms``, the customer FQDN ``name`` in our Record-Routes and Contact) or toward the
        core (``core``, our core-facing Record-Route as an address)."""
        if key == _RECORD_ROUTE:
            return b", ".join(
                self._record_route(rr, direction, memo, name) for rr in split_addresses(value)
            )
        if key == b"Contact" and direction == TO_MS and name is not None:
            return self.contact(value, name, memo)
        return value

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


def _onward(
    target: Target, uri: bytes, routes: list[bytes], head: bytes, tail: bytes,
    replace: dict[bytes, bytes | None],
) -> Onward:  # fmt: skip
    """A request's way on toward Microsoft, our Via marked so its responses come back here."""
    from sipzone.sip.edge import Onward  # edge.py imports this module

    return Onward(target, uri, routes, head, tail, replace, TO_MS)
