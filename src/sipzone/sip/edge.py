"""The edge policy: what to send for each message that arrives, given the current snapshot.

Theory of operation.  The edge is a stateless element (RFC 3261 §16.11): nothing about a
transaction is remembered between messages, so any worker process can handle any message and
a retransmission is handled exactly like the original.

* A request names a *target*: the Request-URI host, or the To host when the Request-URI
  holds an IP literal (a phone that dials the edge's address directly).  The target is
  admitted when the snapshot's matcher admits it; otherwise the edge answers ``403 Domain Not
  Served`` or, for scanners, stays silent.
* OPTIONS to an admitted name is answered here, ``200 OK`` with a Contact that holds the
  matched name (Microsoft Teams checks that it is a name, never an address).  Keep-alives take
  a fast path (``keepalive.py``) that answers with the same bytes.
* Route entries naming us are popped first, and a strict router's rewrite undone
  (``routing.py``, RFC 3261 §16.4).
* Every other request from outside goes to a configured upstream: the one the next Route
  names when it is one (the core's own Record-Route), else the owning tenant's (or the
  site's).  A Route naming anything else is refused (403), never followed.  On the way: our
  Via on top with a signed branch (``signing.py``), Max-Forwards decremented, two
  Record-Routes on dialog-creating requests (one facing each side, RFC 5658, the one facing
  the core an address with the phone's flow token), our Path with that token on a REGISTER
  (RFC 3327), and the tenant headers: the callee's (owner of the name asked for) and the
  caller's (owner of the From name).
* A response whose top Via is ours, and whose branch proves it, loses that Via and goes to the
  next one (its ``received``/``rport``/sent-by, RFC 3261 §18.2.2, RFC 3581).
* A request arriving *from* an upstream (the core's call to a phone, its BYE) goes over the
  flow a token in our popped Route names (RFC 5626 §5.3: the phone's own connection or NAT
  binding; a token we did not sign: 403), else where the next Route or the Request-URI says,
  a strict router ahead served (§16.6 step 6).  Tenant headers never go toward a phone.
* A request carrying a Via of ours with its own loop hash has been here: 482.

Who the core is comes from configuration only: the targets the upstream URIs locate to (RFC
3263, in the background: :meth:`Edge.set_upstreams`), healthy or not.  A request for the
core goes to its upstream's current choice (``choice.py``: the first healthy target by
priority, spread by weight over a priority's targets by Call-ID).
Nothing a peer sends makes the edge look a name up, and the edge never sends to itself.

Nothing here touches a socket: the entry points (:meth:`Edge.receive` for a datagram,
:meth:`Edge.handle` for a message a stream reader framed) return a tuple of
:class:`~sipzone.sip.values.Send` and ``transport.py`` carries them out.  What is worth
remembering per snapshot lives in one :class:`~sipzone.sip.memo.SnapshotMemo`, replaced whole
when the snapshot changes.
"""

from __future__ import annotations

import logging
import re
import secrets
import zlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

from sipzone.eventlog import EventLog
from sipzone.model.snapshot import Snapshot
from sipzone.sip import SipConfig
from sipzone.sip.choice import Choice
from sipzone.sip.debug import SipTrace
from sipzone.sip.keepalive import DECLINED, Declined, KeepAlives
from sipzone.sip.memo import Admission, SnapshotMemo, Upstreams, requested_host
from sipzone.sip.message import (
    EMPTY_TAIL,
    LIST_COMMA,
    RESPONSE_HEAD,
    TO_TAG,
    URI,
    MalformedMessage,
    Request,
    Response,
    Via,
    check_contacts,
    check_request,
    check_response,
    check_uri,
    default_port,
    header_key,
    is_ip_literal,
    parse_address,
    parse_message,
    parse_uri,
    parse_via,
    split_vias,
    stamp_via,
    uri_host,
    via_destination,
)
from sipzone.sip.routing import FORGED, Hop, RouteSet, Routing, our_uri, strict_next
from sipzone.sip.signing import CONN_PARAM, OUR_BRANCH, Keys, loop_hash, via_identity
from sipzone.sip.splice import Splicer
from sipzone.sip.teams import MARK as TEAMS_MARK
from sipzone.sip.teams import TO_CORE, TO_MS, TeamsPolicy
from sipzone.sip.values import NOTHING, Arrival, Listener, Send, Sends, Stats, Target

log = logging.getLogger("sipzone.sip")

DEFAULT_MAX_FORWARDS = 70
# Initial requests of these methods get no Record-Route: it means nothing for them (§10.2).
NO_RECORD_ROUTE = frozenset({"REGISTER", "ACK", "CANCEL", "OPTIONS"})
METHOD_LABELS = frozenset(
    {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
     "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "PUBLISH"}
)  # fmt: skip
_TAG_PARAM = re.compile(rb";[ \t]*tag[ \t]*=", re.I)


class Incoming(NamedTuple):
    """A request being decided: the message, its top Via (None only when a malformed request's
    Via could not be read), where it arrived, and its Max-Forwards (70 when it has none)."""

    request: Request
    top: Via | None
    arrival: Arrival
    max_forwards: int = DEFAULT_MAX_FORWARDS


class Onward(NamedTuple):
    """Where a request goes next: the target, the Request-URI and Route it leaves with, and the
    header lines we add: ``head`` after our Via (Record-Route, Path), ``tail`` last (tenants)."""

    target: Target
    uri: bytes
    routes: list[bytes]
    head: bytes = b""
    tail: bytes = b""
    # The Teams profile's (teams.py): each other header's value rewritten (None: dropped), our
    # Via's mark.
    rewrite: Callable[[bytes, bytes], bytes | None] | None = None
    mark: bytes = b""


class Edge:
    """The policy for one worker: feed it messages, carry out the :class:`Send` it returns."""

    def __init__(self, config: SipConfig, listeners: list[Listener]) -> None:
        self.config = config
        self.listeners = listeners
        self.stats = Stats.new()
        self.events = EventLog(log)
        # Our listener toward a target: same transport and address family, else transport.
        self._toward: dict[tuple[str, bool | None], Listener] = {}
        for lst in reversed(listeners):  # the first listener of a kind wins
            self._toward[(lst.transport, ":" in lst.host)] = lst
            self._toward[(lst.transport, None)] = lst
        self._ours = frozenset((lst.host, lst.port) for lst in listeners)
        self._tenant_name = config.tenant_header.encode()
        self._caller_name = config.caller_tenant_header.encode()
        # Only we say whose call it is: a peer's claims are removed, ours never reach a phone.
        self._tenant_keys = frozenset(map(header_key, (self._tenant_name, self._caller_name)))
        self._upstreams = Upstreams()
        self._routing = Routing(listeners, self._upstreams)
        self._memo: SnapshotMemo | None = None
        # Signs when the store holds no secret (tests, a store `sipzone init` never saw).
        self._own_keys = Keys((secrets.token_bytes(32),))
        self.keepalives = KeepAlives(config, self.stats, self._ours)
        self._keepalive = self.keepalives.answer  # bound once: called for every OPTIONS
        self.splicer = Splicer(self, self.stats, self._tenant_keys)
        self._splice_request = self.splicer.request
        self._splice_response = self.splicer.response
        self.teams = TeamsPolicy(self)
        # The SIP debug switch's lines, while one is on (`sipzone debug sip`): the transports
        # check this one attribute per message and call traced().
        self.trace: SipTrace | None = None

    # -- entry points -------------------------------------------------------------------------

    def receive(self, data: bytes, arrival: Arrival, snapshot: Snapshot) -> Sends:
        """One datagram in, what to send out."""
        memo = self._memo
        if memo is None or memo.snapshot is not snapshot:
            memo = self._adopt(snapshot)
        answer = self._fast(data, arrival, memo)
        if answer is not DECLINED:
            return answer
        if not data.strip(b"\r\n"):
            return NOTHING  # a CRLF keep-alive (RFC 5626 §3.5.1 style): nothing to answer
        try:
            message = parse_message(data)
        except MalformedMessage as exc:
            return self.malformed(exc, arrival)
        return self._handle(message, arrival, memo)

    def spliced(self, data: bytes, arrival: Arrival, snapshot: Snapshot) -> Sends | Declined:
        """What the fast paths send for one whole message a stream reader framed (as bytes),
        or DECLINED: then parse it and :meth:`handle` it."""
        memo = self._memo
        if memo is None or memo.snapshot is not snapshot:
            memo = self._adopt(snapshot)
        return self._fast(data, arrival, memo)

    def _fast(self, data: bytes, arrival: Arrival, memo: SnapshotMemo) -> Sends | Declined:
        start = data[:8]
        if start == b"OPTIONS ":  # keep-alives first: the most frequent by far
            return self._keepalive(data, arrival, memo)
        if self.teams.declines(data, memo):  # the one place Teams traffic leaves the splice path
            return DECLINED
        if start == b"SIP/2.0 ":
            return self._splice_response(data, arrival, memo)
        return self._splice_request(data, arrival, memo)

    def handle(self, message: Request | Response, arrival: Arrival, snapshot: Snapshot) -> Sends:
        """One message a stream reader framed in, what to send out (the general path)."""
        return self._handle(message, arrival, self.memo_for(snapshot))

    def malformed(self, exc: MalformedMessage, arrival: Arrival) -> Sends:
        """Answer a message we could not accept with the status its problem calls for, when a
        reply is possible at all (a request, not ACK, with a Via to answer); else drop it."""
        self.stats.malformed += 1
        request = exc.message
        if not isinstance(request, Request) or request.method == "ACK":
            self.stats.requests[("other", "dropped_malformed")] += 1
            return NOTHING
        if not request.fields.get(b"Via"):
            self._count(request.method, "dropped_malformed")
            return NOTHING
        self._count(request.method, "malformed")
        try:
            top: Via | None = parse_via(request.fields[b"Via"])
        except MalformedMessage:
            top = None  # answer to the source; echo the Via as it came
        reply = self._reply(Incoming(request, top, arrival), exc.status, _reason(str(exc)))
        return self._not_to_us((reply,))

    def upstream_uris(self, snapshot: Snapshot) -> tuple[set[str], set[str]]:
        """The URIs configured in ``snapshot`` that the background locates: the upstreams
        (tenants' and this site's; also probed) and the trunk targets (probed by the trunk
        prober).  Nothing else is ever looked up."""
        upstreams = self._upstreams.uris(snapshot, self.memo_for(snapshot).site)
        return upstreams, {target for trunk in snapshot.trunks for target in trunk.targets}

    def set_upstreams(self, choices: Mapping[str, Choice]) -> None:
        """Where each configured URI sends now, as the background located and probed it."""
        if dict(choices) == self._upstreams.choices:
            return
        self._upstreams.set_choices(choices)
        if self._memo is not None:
            self._adopt(self._memo.snapshot)  # who the core is and where requests go changed

    # -- the per-snapshot memo ----------------------------------------------------------------

    def memo_for(self, snapshot: Snapshot) -> SnapshotMemo:
        """The memo of ``snapshot``: the current one, or a new one replacing it whole."""
        memo = self._memo
        if memo is None or memo.snapshot is not snapshot:
            memo = self._adopt(snapshot)
        return memo

    def _adopt(self, snapshot: Snapshot) -> SnapshotMemo:
        keys = Keys.from_settings(snapshot.settings)
        if keys is None:
            self.events.warning(
                "no-branch-secret",
                "the store holds no branch secret (run `sipzone init`): branches are signed "
                "with a key of this process only, so other workers and nodes cannot relay "
                "their responses",
            )
            keys = self._own_keys
        self._memo = SnapshotMemo(snapshot, self.config, self._upstreams, keys)
        self.trace = SipTrace.follow(self.trace, snapshot.settings)
        return self._memo

    def traced(self, message: bytes | Request | Response, arrival: Arrival, sends: Sends) -> None:
        """Log one message and what it caused, if the debug switch on covers it."""
        if self.trace is not None and not self.trace.exchange(message, arrival, sends):
            self.trace = None  # it ended

    # -- dispatch -----------------------------------------------------------------------------

    def _handle(self, message: Request | Response, arrival: Arrival, memo: SnapshotMemo) -> Sends:
        addr = arrival.addr
        if addr in self._ours:  # from our own socket: spoofed, or a loop; never answer it
            if isinstance(message, Response):
                self.stats.requests[("response", "loop")] += 1
            else:
                self._count(message.method, "loop")
            return NOTHING
        if isinstance(message, Response):
            return self._relay(message, memo)
        try:
            top = check_request(message)  # checks Max-Forwards too
            mf = message.fields.get(b"Max-Forwards")
            max_forwards = int(mf) if mf is not None else DEFAULT_MAX_FORWARDS
            incoming = Incoming(message, top, arrival, max_forwards)
            route = self._routing.route_set(message, memo)
            if addr in memo.core:
                sends = self._downstream(incoming, route, memo)
            else:
                sends = self._request(incoming, route, memo)
        except MalformedMessage as exc:
            if exc.message is None:
                exc.message = message  # field parsers do not know the message they parse
            return self.malformed(exc, arrival)
        return self._not_to_us(sends)

    def _not_to_us(self, sends: Sends) -> Sends:
        """``sends`` without what would go to one of our own listeners (a Via naming us)."""
        for send in sends:
            if (send.host, send.port) in self._ours:
                self.stats.requests[("other", "loop")] += 1
                return tuple(s for s in sends if (s.host, s.port) not in self._ours)
        return sends

    # -- requests from outside: towards the core -----------------------------------------------

    def _request(self, incoming: Incoming, route: RouteSet, memo: SnapshotMemo) -> Sends:
        """A request from a phone or a peer: admitted by the name it is for, answered here
        (OPTIONS) or sent on to a configured upstream, never to a host a peer names."""
        request = incoming.request
        method = request.method
        fields = request.fields
        host = uri_host(route.uri)
        if host is None:
            check_uri(route.uri)  # raises for what is not a sip, sips or tel URI
        host = requested_host(host, fields[b"To"])
        admissions = memo.admissions  # the common case, a host seen before, without a call
        admission = admissions[host] if host in admissions else memo.admit(host)
        if admission is None:
            admission = self._admitted_route(route, memo)
        hop, upstream_hop = Hop.OURS, None
        if route.routes:
            hop, upstream_hop = self._routing.classify(route.routes[0], memo)
        if admission is None and hop is not Hop.UPSTREAM:
            if method == "ACK" or self.config.drop_unknown:
                self._count(method, "dropped")
                return NOTHING
            self._count(method, "rejected")
            return (self._reply(incoming, 403, b"Domain Not Served"),)

        proxy_require = fields.get(b"Proxy-Require")
        if proxy_require and method != "ACK":
            # We implement no proxy extensions (RFC 3261 §16.3 step 5, RFC 4475 §3.3.5).
            self._count(method, "unsupported")
            return (self._unsupported(incoming, proxy_require),)
        if incoming.max_forwards == 0:
            return self._refuse(incoming, "too_many_hops", 483, b"Too Many Hops")

        if method == "OPTIONS" and not route.routes and not _has_tag(fields[b"To"]):
            assert admission is not None
            require = fields.get(b"Require")
            if require:
                self._count(method, "unsupported")
                return (self._unsupported(incoming, require),)
            self._count(method, "answered")
            tail = memo.options_tail(admission.name, incoming.arrival.listener)
            return (self._reply(incoming, 200, b"OK", tail),)

        check_contacts(request)
        if hop is Hop.FOREIGN:
            # A peer names the next hop: not followed, whoever it is (no open relay).
            return self._refuse(incoming, "route_refused", 403, b"Route Not Allowed")
        uri, routes = route.uri, route.routes
        if upstream_hop is not None:  # the core's own Record-Route: on to that core
            target = upstream_hop
            uri, routes = strict_next(uri, routes)
        else:
            assert admission is not None
            choice = self.upstream_choice(admission, memo)
            if choice is None:
                upstream = memo.upstream_of(admission.tenant)
                reason = self._no_upstream(admission.tenant.name, upstream, memo)
                return self._refuse(incoming, "no_upstream", 503, reason)
            target = choice.pick(fields[b"Call-ID"])
        mark, back = b"", None
        if upstream_hop is None:
            try:
                teams = self.teams.toward_core(request, uri, target, admission, memo)
            except ValueError:
                return self._refuse(incoming, "bad_flow_token", 403, b"Invalid Alias")
            if teams is not None:
                uri, target, mark, back = teams
        head = self._toward_core(incoming, admission, self.listener_toward(target), memo, back)
        tail = self.tenant_lines(fields[b"From"], admission, memo)
        onward = Onward(target, uri, routes, head, tail, mark=mark)
        return self._forward(incoming, onward, memo)

    def upstream_choice(self, admission: Admission, memo: SnapshotMemo) -> Choice | None:
        """Where requests for a name ``admission`` admits go: the choice of the owning
        tenant's upstream (or the site's); None when there is none or it is not located yet."""
        upstream = memo.upstream_of(admission.tenant)
        return self._upstreams.choice(upstream) if upstream else None

    def _toward_core(
        self,
        incoming: Incoming,
        admission: Admission | None,
        out: Listener,
        memo: SnapshotMemo,
        back: Target | None = None,
    ) -> bytes:
        """What we add to a phone's request for the core: on a REGISTER our Path (RFC 3327)
        with the phone's flow; on a request that may start a dialog, two Record-Routes
        (RFC 5658), the top one facing the core (``out``, an address, the phone's flow or
        ``back``, the way back the Teams profile chose), the other facing the phone (the name
        it asked for, the listener it came in on)."""
        request, _, arrival, _ = incoming
        method = request.method
        if method != "REGISTER" and (method in NO_RECORD_ROUTE or _has_tag(request.fields[b"To"])):
            return b""
        if method == "REGISTER":
            # The core reaches the phone through us, over its own flow.  A UA that supports
            # Path says so; then the registrar must too (RFC 3327 §5.2).
            supported = request.fields.get(b"Supported", b"").lower()
            wants = b"path" in (tag.strip() for tag in supported.split(b","))
            core_facing = our_uri(out, user=self._flow_token(arrival, memo))
            return b"Path: %s\r\n%s" % (core_facing, b"Require: path\r\n" if wants else b"")
        return self.record_routes(arrival, admission, out, memo, back)

    def record_routes(
        self,
        arrival: Arrival,
        admission: Admission | None,
        out: Listener,
        memo: SnapshotMemo,
        back: Target | None = None,
    ) -> bytes:
        """The two Record-Routes on a phone's dialog-creating request (RFC 5658): the top one
        facing the core (``out``, an address, with the phone's flow, or ``back``), the other
        facing the phone (the name it asked for, the listener it came in on)."""
        name = admission.name.encode() if admission is not None else None
        token = self._flow_token(arrival, memo) if back is None else memo.keys.flow_token(back)
        return b"Record-Route: %s\r\nRecord-Route: %s\r\n" % (
            our_uri(out, user=token),
            our_uri(arrival.listener, host=name),
        )

    @staticmethod
    def _flow_token(arrival: Arrival, memo: SnapshotMemo) -> bytes | None:
        listener, (host, port), conn = arrival
        return memo.keys.flow_token(Target(listener.transport, host, port, conn))

    def tenant_lines(
        self, from_value: bytes, admission: Admission | None, memo: SnapshotMemo
    ) -> bytes:
        """Our tenant headers for the core: the owner of the name the request is for, and the
        owner of the name in its From (``from_value``) when we serve it (the caller's)."""
        lines = b""
        if admission is not None:
            lines = b"%s: %s\r\n" % (self._tenant_name, memo.tenant_value(admission.tenant))
        caller = memo.caller(from_value)
        if caller is not None:
            lines += b"%s: %s\r\n" % (self._caller_name, memo.tenant_value(caller.tenant))
        return lines

    def _admitted_route(self, route: RouteSet, memo: SnapshotMemo) -> Admission | None:
        """The admission of a name of ours popped from the Route (the FQDN we record-routed):
        an in-dialog request whose Request-URI and To name no domain we serve."""
        for uri in route.popped:
            if not is_ip_literal(uri.host):
                admission = memo.admit(uri.host)
                if admission is not None:
                    return admission
        return None

    # -- requests from the core: towards a phone ------------------------------------------------

    def _downstream(self, incoming: Incoming, route: RouteSet, memo: SnapshotMemo) -> Sends:
        """A request from the core: it goes where the next Route or the Request-URI says."""
        request = incoming.request
        flow = self._routing.flow(route, memo)
        if flow is FORGED:
            return self._refuse(incoming, "bad_flow_token", 403, b"Invalid Flow Token")
        teams = self.teams.from_core(incoming, route, flow, memo)
        if teams is not None:
            return teams
        next_uri = parse_address(route.routes[0], "Route").uri if route.routes else route.uri
        hop = parse_uri(next_uri)
        if not hop.host:
            raise MalformedMessage(f"no host to send {request.method} to", request)
        if incoming.max_forwards == 0:
            return self._refuse(incoming, "too_many_hops", 483, b"Too Many Hops")
        # Only an address, or a name of our configured upstreams: never a lookup for a peer.
        target = flow or self._routing.target(hop)  # a phone's flow first (RFC 5626 §5.3)
        if target is None:
            addr = incoming.arrival.addr
            self.events.warning(
                "next-hop-name",
                "in-dialog %s from %s:%d: next hop %s is a name we do not resolve; answering 502",
                request.method, addr[0], addr[1], hop.host[:100].decode("utf-8", "replace"),
            )  # fmt: skip
            return self._refuse(incoming, "unresolvable", 502, b"Next Hop Is Not An Address")
        uri, routes = route.uri, route.routes
        if routes:
            uri, routes = strict_next(uri, routes)
        head = self._toward_phone(incoming, target, memo)
        return self._forward(incoming, Onward(target, uri, routes, head), memo)

    def _toward_phone(self, incoming: Incoming, target: Target, memo: SnapshotMemo) -> bytes:
        """The two Record-Routes on a request from the core that may start a dialog (RFC 5658):
        the top one facing the phone (``target``), the other facing the core (an address, the
        listener the request came in on) and carrying the phone's flow, so that the core's
        in-dialog requests leave over it too."""
        request, _, arrival, _ = incoming
        fields = request.fields
        if request.method in NO_RECORD_ROUTE or _has_tag(fields[b"To"]):
            return b""
        # The phone-facing entry names the callee's domain when we serve it: To, as dialled.
        to_host = uri_host(parse_address(fields[b"To"], "To").uri)
        name = None
        if to_host and not is_ip_literal(to_host):
            admission = memo.admit(to_host)
            name = admission.name.encode() if admission is not None else None
        token = memo.keys.flow_token(target)
        return b"Record-Route: %s\r\nRecord-Route: %s\r\n" % (
            our_uri(self.listener_toward(target), host=name),
            our_uri(arrival.listener, user=token),
        )

    # -- forwarding -----------------------------------------------------------------------------

    def _forward(self, incoming: Incoming, onward: Onward, memo: SnapshotMemo) -> Sends:
        """Send the request on and count it, unless it loops (482)."""
        request = incoming.request
        target = onward.target
        loop = loop_hash(request)
        if (target.host, target.port) in self._ours or self._has_looped(request, loop):
            return self._refuse(incoming, "loop", 482, b"Loop Detected")
        self._count(request.method, "forwarded")
        self.stats.forwarded += 1
        data = self._forwarded_bytes(incoming, onward, loop, memo)
        return (Send(data, *target),)

    def _has_looped(self, request: Request, loop: bytes) -> bool:
        """Whether a Via of ours carries this request's loop hash: it was here before and
        comes back unchanged (RFC 3261 §16.3 step 4; a changed one is a spiral)."""
        vias = request.fields[b"Via"]
        marker = OUR_BRANCH + loop
        if marker not in vias:
            return False  # the common case costs one substring search
        return any(
            (via.branch or b"").startswith(marker) and self._is_our_sent_by(via)
            for via in split_vias(vias)  # at most MAX_VIAS: check_request counted them
        )

    def _forwarded_bytes(
        self, incoming: Incoming, onward: Onward, loop: bytes, memo: SnapshotMemo
    ) -> bytes:
        """The request as a stateless proxy sends it on (RFC 3261 §16.6, §16.11)."""
        request, top, arrival, max_forwards = incoming
        assert top is not None  # a request that passed check_request
        target = onward.target
        out = self.listener_toward(target)
        transport = target.transport.upper().encode()
        addr, conn = arrival.addr, arrival.conn
        # The Via below ours exactly as it leaves (stamped), which the HMAC vouches for.
        below = parse_via(stamp_via(request.fields[b"Via"][: top.end], top, addr))
        conn_value = b"%d" % conn if conn is not None else b""
        branch = memo.keys.branch(loop, via_identity(below), conn_value, transport)
        via = b"SIP/2.0/%s %s;branch=%s" % (transport, out.sent_by, branch)
        if conn is not None:
            via += b";%s=%s" % (CONN_PARAM, conn_value)
        if onward.mark:
            via += b";%s=%s" % (TEAMS_MARK, onward.mark)
        rewrite = onward.rewrite
        lines = [b"Via: " + via + b"\r\n", onward.head]
        tenant_keys = self._tenant_keys
        seen_via = seen_route = False
        for key, name, value in request.headers():
            if key == b"Via" and not seen_via:
                seen_via = True
                value = stamp_via(value, top, addr)
            elif key == b"Max-Forwards":
                continue
            elif key == b"Route":
                if not seen_route:
                    seen_route = True
                    lines.extend(b"Route: " + r + b"\r\n" for r in onward.routes)
                continue
            elif key in tenant_keys:
                continue  # a peer's claim (toward the core) or ours (toward a phone)
            elif rewrite is not None:
                new = rewrite(key, value)
                if new is None:
                    continue
                value = new
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"Max-Forwards: %d\r\n%s" % (max_forwards - 1, onward.tail))
        if b"Content-Length" not in request.fields:
            lines.append(b"Content-Length: %d\r\n" % len(request.body))
        start = request.start_line
        if onward.uri != request.uri:
            start = b"%s %s SIP/2.0" % (request.method.encode(), onward.uri)
        return start + b"\r\n" + b"".join(lines) + b"\r\n" + request.body

    # -- responses from the core --------------------------------------------------------------

    def _relay(self, response: Response, memo: SnapshotMemo) -> Sends:
        """Pop our Via and send the response where the next Via says (RFC 3261 §16.7, §18.2.2),
        if our branch vouches for that Via; anything else is dropped and counted."""
        try:
            check_response(response)
            vias = response.fields[b"Via"]
            top = parse_via(vias)
            branch = top.branch or b""
            if not branch.startswith(OUR_BRANCH) or not self._is_our_sent_by(top):
                self.stats.requests[("response", "stray")] += 1
                return NOTHING
            if top.end >= len(vias):
                self.stats.requests[("response", "forged")] += 1
                return NOTHING
            nxt = parse_via(vias, LIST_COMMA.match(vias, top.end).end())  # type: ignore[union-attr]
        except MalformedMessage:
            self.stats.malformed += 1
            return NOTHING
        if not memo.keys.vouches(top, nxt):
            self.stats.requests[("response", "forged")] += 1
            return NOTHING
        host, port = via_destination(nxt)
        if not is_ip_literal(host) or not port:
            # Our stamp makes every Via we vouch for name an address (received); never resolve.
            self.stats.requests[("response", "unroutable")] += 1
            return NOTHING
        if (host, port) in self._ours:
            self.stats.requests[("response", "loop")] += 1
            return NOTHING
        lines = []
        popped = False
        tenant_keys = self._tenant_keys
        teams = top.params.get(TEAMS_MARK)
        if teams is not None:  # a Teams dialog's: on toward the core, or toward Microsoft
            direction = TO_CORE if teams == TO_MS else TO_MS
            fields = response.fields
            customer = self.teams.response_name(fields.get(b"Record-Route"), fields[b"To"], memo)
        for key, name, value in response.headers():
            if key in tenant_keys:
                continue  # ours never reach a phone; a phone's never reach the core
            if key == b"Via" and not popped:
                popped = True
                first = parse_via(value)
                if first.end >= len(value):
                    continue  # our Via had the line to itself
                value = value[LIST_COMMA.match(value, first.end).end() :]  # type: ignore[union-attr]
            elif teams is not None:
                new = self.teams.response_lines(key, value, direction, memo, customer)
                if new is None:
                    continue
                value = new
            lines.append(name + b": " + value + b"\r\n")
        data = response.start_line + b"\r\n" + b"".join(lines) + b"\r\n" + response.body
        conn_param = top.params.get(CONN_PARAM)
        conn = int(conn_param) if conn_param and conn_param.isdigit() else None
        self.stats.relayed += 1
        return (Send(data, nxt.transport, host, port, conn),)

    def listener_toward(self, target: Target) -> Listener:
        """Our listener a message to ``target`` leaves by: its transport and address family."""
        toward = self._toward
        return (
            toward.get((target.transport, ":" in target.host))
            or toward.get((target.transport, None))
            or self.listeners[0]
        )

    # -- what the Teams profile (teams.py) asks of the edge ---------------------------------

    @property
    def upstreams(self) -> Upstreams:
        return self._upstreams

    def refuse(self, incoming: Incoming, verdict: str, status: int, reason: bytes) -> Sends:
        return self._refuse(incoming, verdict, status, reason)

    def unsupported(self, incoming: Incoming, tags: bytes) -> Sends:
        """``420 Bad Extension`` naming ``tags`` (an ACK is only dropped)."""
        method = incoming.request.method
        if method == "ACK":
            self._count(method, "dropped")
            return NOTHING
        self._count(method, "unsupported")
        return (self._unsupported(incoming, tags),)

    @staticmethod
    def starts_dialog(request: Request) -> bool:
        """Whether ``request`` may start a dialog (it gets our Record-Route)."""
        return request.method not in NO_RECORD_ROUTE and not _has_tag(request.fields[b"To"])

    def tls_listener(self) -> Listener:
        """Our TLS listener (what Microsoft reaches us at), else the first."""
        return self._toward.get(("tls", None)) or self.listeners[0]

    def our_listener(self, uri: URI, memo: SnapshotMemo) -> Listener | None:
        """The listener a URI we recorded names (it names us; by port and transport), or None."""
        if not self._routing.is_us(uri, memo):
            return None
        for lst in self.listeners:
            if lst.port == uri.port and lst.transport == uri.transport:
                return lst
        return None

    def forward(self, incoming: Incoming, onward: Onward, memo: SnapshotMemo) -> Sends:
        return self._forward(incoming, onward, memo)

    def _is_our_sent_by(self, via: Via) -> bool:
        host = via.host.strip(b"[]").decode("ascii", "replace")
        return (host, via.port or default_port(via.transport)) in self._ours

    # -- responses we originate (RFC 3261 §8.2.6) ---------------------------------------------

    def _reply(
        self, incoming: Incoming, status: int, reason: bytes, tail: bytes = EMPTY_TAIL
    ) -> Send:
        request, top, arrival, _ = incoming
        addr = arrival.addr
        fields = request.fields
        via = fields[b"Via"]
        if top is not None:
            via = stamp_via(via, top, addr)
        to = fields.get(b"To", b"")
        if status != 100 and to and not _has_tag(to):
            to += TO_TAG % zlib.crc32(via)
        data = RESPONSE_HEAD % (
            status,
            reason,
            via,
            fields.get(b"From", b""),
            to,
            fields.get(b"Call-ID", b""),
            fields.get(b"CSeq", b""),
            tail,
        )
        transport = arrival.listener.transport
        if transport != "udp":
            return Send(data, transport, addr[0], addr[1], arrival.conn)
        if top is None or top.rport is not None:
            return Send(data, "udp", addr[0], addr[1])
        # RFC 3261 §18.2.2: to the source address, at the port the Via names.
        return Send(data, "udp", addr[0], top.port or default_port("udp"))

    def _unsupported(self, incoming: Incoming, tags: bytes) -> Send:
        tail = b"Unsupported: %s\r\n%s" % (tags, EMPTY_TAIL)
        return self._reply(incoming, 420, b"Bad Extension", tail)

    def _refuse(self, incoming: Incoming, verdict: str, status: int, reason: bytes) -> Sends:
        """Count ``verdict`` and answer ``status``; an ACK is never answered, only dropped."""
        method = incoming.request.method
        if method == "ACK":
            self._count(method, "dropped")
            return NOTHING
        self._count(method, verdict)
        return (self._reply(incoming, status, reason),)

    # -- upstream trouble, counting -----------------------------------------------------------

    def _no_upstream(self, tenant: str, upstream: str | None, memo: SnapshotMemo) -> bytes:
        """Log (rate-limited) why ``tenant``'s requests cannot go on; the 503 reason phrase."""
        if not upstream:
            self.events.warning(
                f"no-upstream:{tenant}",
                "tenant %s has no upstream and site %s has none: answering 503",
                tenant,
                memo.site.name if memo.site else "(none)",
            )
            return b"No Upstream Configured"
        if self._upstreams.target(upstream) is None:
            self.events.warning(
                f"bad-upstream:{tenant}",
                "tenant %s: upstream %r is not a usable sip: URI (udp/tcp)",
                tenant,
                upstream,
            )
            return b"No Upstream Configured"
        self.events.warning(
            f"unresolved-upstream:{tenant}",
            "tenant %s: upstream %r does not resolve (yet): answering 503",
            tenant,
            upstream,
        )
        return b"Upstream Not Resolved"

    def _count(self, method: str, verdict: str) -> None:
        self.stats.requests[(method if method in METHOD_LABELS else "other", verdict)] += 1


# -- helpers ----------------------------------------------------------------------------------


def _has_tag(address: bytes) -> bool:
    if b"tag" not in address.lower():
        return False
    try:
        return parse_address(address).tag is not None
    except MalformedMessage:
        # A 400 may be about this very To; keep whatever tag-looking parameter it has.
        return _TAG_PARAM.search(address) is not None


def _reason(text: str) -> bytes:
    """An error message made safe for a Reason-Phrase (no CR/LF, bounded)."""
    data = text.encode("ascii", "backslashreplace").replace(b"\r", b" ").replace(b"\n", b" ")
    return data[:160]
