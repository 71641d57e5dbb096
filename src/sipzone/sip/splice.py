"""The fast path for proxied datagrams: a phone's request on to the core, and a response on to
the element whose request we forwarded, built by splicing the bytes that arrived instead of
parsing them into a message and serialising it again.

A call brings six such messages through the edge (INVITE, 180, 200, ACK, BYE, 200), and nearly
everything in them repeats: the order of the header lines, the Via of a phone up to its
branch, the From of a user up to its tag, the To, the Contact, the Route set of a dialog, our
own Via on a response.  :class:`Splicer` checks each of those once, by the general path's own
functions, and remembers the verdict:

* per *shape* (the header names in order): where each field the edge reads is, which lines go
  on and which are dropped (our Via on a response, Route entries of ours, Max-Forwards, tenant
  headers), whether the shape can take this path at all (no Proxy-Require, Date, repeated
  single headers, several Via lines on a request...);
* per Via up to its branch, per address (From and To up to their tags), per Contact value: that
  the grammar accepts it, and what the way back needs from a Via;
* per snapshot (in the :class:`~sipzone.sip.memo.SnapshotMemo`, replaced whole with it): per
  host asked for and From, the edge's decision (where the request goes, the tenant headers),
  and per phone the Record-Route pair it gets.

After that a message costs a split into lines, a handful of dictionary hits, the loop hash and
the HMAC of the branch, and one ``%`` that splices the new lines between the old ones.  Whatever
the path sends, the general path (``edge.py``) would send byte for byte, and count the same; the
tests hold it to that over a mutation fuzz.  Anything unusual (folded or oddly spaced lines,
compact forms that repeat, a strict router, a Route not ours, a request from the core, a name
not served, a REGISTER or an OPTIONS, which have their own paths) is declined with
:data:`~sipzone.sip.keepalive.DECLINED`, and the general path decides.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

from sipzone.sip.choice import Choice
from sipzone.sip.keepalive import DECLINED, Declined
from sipzone.sip.memo import MEMO_CAP, Admission, SnapshotMemo
from sipzone.sip.message import (
    CALL_ID,
    MAX_CSEQ,
    MAX_EXPIRES,
    MAX_FORWARDS,
    MAX_HEADERS,
    MAX_MESSAGE,
    REQUIRED,
    SINGLE,
    TOKEN,
    URI,
    MalformedMessage,
    Via,
    check_contact,
    default_port,
    header_key,
    is_address,
    is_ip_literal,
    match_via,
    parse_address,
    parse_params,
    parse_via,
    stamp_via,
    uri_host,
    via_destination,
)
from sipzone.sip.routing import OURS_PER_PASS
from sipzone.sip.signing import CONN_PARAM, OUR_BRANCH, loop_hash_of, via_identity
from sipzone.sip.values import Arrival, Send, Sends, Stats, Target, new_tuple

if TYPE_CHECKING:
    from sipzone.sip.edge import Edge

# Requests this path forwards: REGISTER (Path) and OPTIONS (answered here) have their own.
METHODS = frozenset(
    {b"INVITE", b"ACK", b"BYE", b"CANCEL", b"PRACK", b"UPDATE", b"INFO", b"MESSAGE",
     b"NOTIFY", b"SUBSCRIBE", b"REFER", b"PUBLISH"}
)  # fmt: skip
UNRECORDED = frozenset({b"ACK", b"CANCEL"})  # no Record-Route (RFC 3261 §16.6 step 4)
SHAPES_KEPT = 256  # orders of header lines remembered before starting over
_NAMES = re.compile(rb"\r\n([^:\r\n]*): ")  # the name of every plain "Name: value" line
_SWS = re.compile(rb"[ \t]+")
# The grammar's own patterns, called without a wrapper: a few of these run per message.
_token = re.compile(TOKEN + rb"\Z").match
_call_id = re.compile(CALL_ID + rb"\Z").match
_TEMPLATE_BRANCH = b"z9hG4bK.sz.template"  # stands for any token branch while a Via is learnt
_ABSENT = -1


class ViaInfo(NamedTuple):
    """What one Via value (one via-parm, its branch aside) means, worked out once."""

    transport: str  # lower case, as a Send names it
    transport_name: bytes  # as written
    host: bytes  # as written
    address: str  # the sent-by host without brackets
    port: int | None
    rport: bool  # an rport parameter, with or without a value
    identity: bytes  # via_identity() up to its parameters
    params_at: int  # where the parameters start in the value
    spaced: bool  # whitespace among the parameters (via_identity removes it)
    conn: bytes | None  # our sz-c parameter
    destination: tuple[str, int]  # where a response for it goes (received, rport)
    routable: bool  # the destination is an address


# Positions in a request's shape: (line, value offset) per field, ``_ABSENT`` when missing.
RequestShape = tuple[
    int, int, int, int, int, int, int, int, int, int,  # Via, From, To, Call-ID, CSeq
    int, int, int, int, int, int, int, int,  # Max-Forwards, Content-Length, Contact, Expires
    tuple[tuple[int, int], ...],  # Route lines
    Callable[[list[bytes]], tuple[bytes, ...]],  # the lines that go on
]  # fmt: skip
# A response's: our Via, the next, CSeq, Content-Length; the lines that go on.
ResponseShape = tuple[
    int, int, int, int, int, int, int, int,  # our Via, the next Via line, CSeq, Content-Length
    Callable[[list[bytes]], tuple[bytes, ...]],  # the lines that go on (our Via's dropped)
    Callable[[list[bytes]], tuple[bytes, ...]],  # the same with our Via's line, others kept
]  # fmt: skip


class Plan(NamedTuple):
    """The edge's decision for a phone's requests for one host from one From (up to its tag)."""

    target: Target  # the upstream's target when it has one choice
    admission: Admission  # the matched name and its owner
    via_head: bytes  # our Via line up to its branch value
    transport: bytes  # our Via's transport, upper case
    tail: bytes  # the tenant headers
    spread: Choice | None  # when the upstream spreads calls over targets: one by Call-ID


class Splicer:
    """The proxied-message fast path of one edge (see the module docstring)."""

    def __init__(self, edge: Edge, stats: Stats, tenant_keys: frozenset[bytes]) -> None:
        self._edge = edge
        self._stats = stats
        self._tenant_keys = tenant_keys
        self._ours = frozenset((lst.host, lst.port) for lst in edge.listeners)
        self._request_shapes: dict[tuple[bytes, ...], RequestShape | None] = {}
        self._response_shapes: dict[tuple[bytes, ...], ResponseShape | None] = {}
        self._vias: dict[tuple[bytes, bytes], ViaInfo | None] = {}
        self._addresses: dict[bytes, bytes | None] = {}  # address -> its URI's host, b"" none
        self._contacts: dict[bytes, bool] = {}
        self._forwarded: dict[bytes, tuple[str, str]] = {
            method: (method.decode(), "forwarded") for method in METHODS
        }

    # -- requests from a phone ------------------------------------------------------------------

    def request(self, data: bytes, arrival: Arrival, memo: SnapshotMemo) -> Sends | Declined:
        """The datagram ``data`` forwarded to the core, or DECLINED."""
        head, sep, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        start = lines[0]
        method, _, rest_of_line = start.partition(b" ")
        if method not in METHODS or not sep or len(data) > MAX_MESSAGE:
            return DECLINED
        uri, _, version = rest_of_line.partition(b" ")
        if version != b"SIP/2.0" or not uri or b"\t" in uri:
            return DECLINED
        listener, addr, conn = arrival
        if addr in self._ours or addr in memo.core:
            return DECLINED
        found = _names(head, lines)
        if found is None:
            return DECLINED
        padded, key = found
        shapes = self._request_shapes
        shape = shapes[key] if key in shapes else self._learn_request(key)
        if shape is None:
            return DECLINED
        (vi, va, fi, fa, ti, ta, ci, ca, si, sa, mi, ma, li, la, ki, ka, ei, ea, routes, kept) = (
            shape
        )

        cseq = lines[si][sa:]
        number, _, cseq_method = cseq.partition(b" ")
        if cseq_method != method or not number.isdigit() or len(number) > 10:
            return DECLINED
        if len(number) == 10 and int(number) > MAX_CSEQ:
            return DECLINED
        call_id = lines[ci][ca:]
        if _call_id(call_id) is None:
            return DECLINED
        if mi == _ABSENT:
            max_forwards = 70
        else:
            value = lines[mi][ma:]
            if not value.isdigit() or len(value) > 5:
                return DECLINED
            max_forwards = int(value)
            if not 0 < max_forwards <= MAX_FORWARDS:
                return DECLINED  # 0: the general path answers 483
        if li == _ABSENT:
            if padded:
                return DECLINED
            body: bytes | None = rest
            length_line = b"Content-Length: %d\r\n" % len(rest)
        else:
            body = _body(lines, li, la, padded, rest)
            if body is None:
                return DECLINED
            length_line = b""
        if ei != _ABSENT:
            value = lines[ei][ea:]
            if not value.isdigit() or int(value) > MAX_EXPIRES:
                return DECLINED
        if ki != _ABSENT:
            contact = lines[ki][ka:]
            valid = self._contacts.get(contact)
            if valid is None:
                valid = self._learn_contact(contact)
            if not valid:
                return DECLINED

        from_ = lines[fi][fa:]
        from_address, tagged, from_tag = from_.rpartition(b";tag=")
        if not tagged or _token(from_tag) is None:
            return DECLINED
        addresses = self._addresses
        if from_address in addresses:
            if addresses[from_address] is None:
                return DECLINED
        elif self._learn_address(from_address) is None:
            return DECLINED
        to = lines[ti][ta:]
        to_address, to_tagged, to_tag = to.rpartition(b";tag=")
        if to_tagged:
            if _token(to_tag) is None:
                return DECLINED
        elif b"tag" in to.lower():
            return DECLINED  # perhaps a tag written otherwise: the general path reads it
        else:
            to_address = to
        if to_address in addresses:
            to_host = addresses[to_address]
        else:
            to_host = self._learn_address(to_address)
        if to_host is None:
            return DECLINED

        route = b""
        if routes:
            if b";lr" in uri.lower():
                return DECLINED  # perhaps a strict router's rewrite to undo
            route = b", ".join([lines[i][at:] for i, at in routes])
            known = memo.splice_routes
            ours = known.get(route)
            if ours is None:
                ours = _ours_only(route, memo.our_routes)
                if ours:  # a Route not yet known as ours may be known after the general path
                    if len(known) >= MEMO_CAP:
                        known.clear()
                    known[route] = True
            if not ours:
                return DECLINED

        host = uri_host(uri)
        if host is None:
            return DECLINED
        if is_ip_literal(host):
            host = to_host
        plans = memo.splice_plans
        plan_key = (host, from_address)
        plan = plans[plan_key] if plan_key in plans else self._learn_plan(plan_key, from_, memo)
        if plan is None:
            return DECLINED
        target, admission, via_head, transport, tail, spread = plan
        if spread is not None:
            target = spread.pick(call_id)

        via = lines[vi][va:]
        parsed = self._via_of(via)
        if parsed is None:
            return DECLINED
        info = parsed[0]
        loop = loop_hash_of(uri, from_tag, call_id, number, route)
        if OUR_BRANCH + loop in via:
            return DECLINED  # perhaps a loop: the general path looks closer
        if info.rport or info.address != addr[0]:
            stamped = stamp_via(via, Via(info.transport_name, info.host, info.port,
                                         via[info.params_at :], len(via)), addr)  # fmt: skip
            lines[vi] = lines[vi][:va] + stamped
            below = via_identity(parse_via(stamped))
        else:
            params = via[info.params_at :]
            below = info.identity + (_SWS.sub(b"", params) if info.spaced else params)
        if conn is None:
            branch = memo.keys.branch(loop, below, b"", transport)
        else:  # the connection it came in on, which the response goes back over
            value = b"%d" % conn
            branch = memo.keys.branch(loop, below, value, transport)
            branch += b";%s=%s" % (CONN_PARAM, value)

        record = b""
        if not to_tagged and method not in UNRECORDED:
            heads = memo.splice_heads
            name = admission.name
            head_key = (addr, conn, listener.transport, listener.host, listener.port, name)
            record = heads.get(head_key) or self._learn_head(head_key, arrival, plan, memo)
        stats = self._stats
        stats.requests[self._forwarded[method]] += 1
        stats.forwarded += 1
        out = b"%s\r\n%s%s\r\n%s%s\r\nMax-Forwards: %d\r\n%s%s\r\n%s" % (
            start,
            via_head,
            branch,
            record,
            b"\r\n".join(kept(lines)),
            max_forwards - 1,
            tail,
            length_line,
            body,
        )
        return (new_tuple(Send, (out, target.transport, target.host, target.port, None)),)

    # -- responses to what we forwarded ---------------------------------------------------------

    def response(self, data: bytes, arrival: Arrival, memo: SnapshotMemo) -> Sends | Declined:
        """The response ``data`` relayed to the Via below ours, or DECLINED."""
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep or len(data) > MAX_MESSAGE or arrival.addr in self._ours:
            return DECLINED
        lines = head.split(b"\r\n")
        start = lines[0]
        code = start[8:11]
        if start[:8] != b"SIP/2.0 " or start[11:12] != b" " or not code.isdigit():
            return DECLINED
        if not b"100" <= code <= b"699" or b"\r" in start or b"\n" in start:
            return DECLINED
        found = _names(head, lines)
        if found is None:
            return DECLINED
        padded, key = found
        shapes = self._response_shapes
        shape = shapes[key] if key in shapes else self._learn_response(key)
        if shape is None:
            return DECLINED
        v1, a1, v2, a2, si, sa, li, la, kept, kept_first = shape

        number, _, method = lines[si][sa:].partition(b" ")
        if not number.isdigit() or len(number) > 10 or _token(method) is None:
            return DECLINED
        if len(number) == 10 and int(number) > MAX_CSEQ:
            return DECLINED
        if li == _ABSENT:
            if padded:
                return DECLINED
            body: bytes | None = rest
        else:
            body = _body(lines, li, la, padded, rest)
            if body is None:
                return DECLINED

        # Our Via alone on its line (then the next Via line is the next), or first in a list.
        vias = lines[v1][a1:]
        if b'"' in vias:
            return DECLINED
        ours, comma, others = vias.partition(b",")
        if comma:
            others = others.lstrip(b" ")
            below, _, _ = others.partition(b",")
            lines[v1] = lines[v1][:a1] + others
            kept = kept_first
        elif v2 == _ABSENT:
            return DECLINED  # no Via below ours: the general path counts it forged
        else:
            below = lines[v2][a2:]
            if b"," in below or b'"' in below:
                below = below.partition(b",")[0]
        if ours[-1:] == b" " or below[-1:] == b" ":
            return DECLINED  # space before a comma: the parser's via ends elsewhere
        parsed = self._via_of(ours)
        if parsed is None:
            return DECLINED
        top, branch = parsed
        if not branch.startswith(OUR_BRANCH):
            return DECLINED
        if (top.address, top.port or default_port(top.transport)) not in self._ours:
            return DECLINED  # not ours: the general path counts it as stray
        parsed = self._via_of(below)
        if parsed is None or not parsed[0].routable:
            return DECLINED
        nxt = parsed[0]
        params = below[nxt.params_at :]
        identity = nxt.identity + (_SWS.sub(b"", params) if nxt.spaced else params)
        if not memo.keys.vouch(branch, top.conn or b"", top.transport_name, identity):
            return DECLINED  # forged: the general path counts it
        host, port = nxt.destination
        if (host, port) in self._ours:
            return DECLINED
        self._stats.relayed += 1
        out = b"%s\r\n%s\r\n\r\n%s" % (start, b"\r\n".join(kept(lines)), body)
        conn = int(top.conn) if top.conn and top.conn.isdigit() else None
        return (new_tuple(Send, (out, nxt.transport, host, port, conn)),)

    def _via_of(self, via: bytes) -> tuple[ViaInfo, bytes] | None:
        """What a Via value of one via-parm means (learnt once per Via up to its branch), and
        its branch, when that is a token; None when the path leaves it to the parser."""
        before, has_branch, after = via.partition(b";branch=")
        if not has_branch:
            return None
        branch, semi, after = after.partition(b";")
        key = (before, semi + after)
        vias = self._vias
        info = vias[key] if key in vias else self._learn_via(key)
        if info is None or _token(branch) is None:
            return None
        return info, branch

    # -- what is learnt once --------------------------------------------------------------------

    def _keys(self, names: tuple[bytes, ...]) -> list[bytes] | None:
        """The header keys of ``names``, or None when one is not a plain token name."""
        keys = []
        for name in names:
            if name != name.rstrip(b" \t"):
                return None  # "Via : ..." goes on as "Via: ..."; leave it to the general path
            try:
                keys.append(header_key(name))
            except MalformedMessage:
                return None
        return keys

    def _learn_request(self, names: tuple[bytes, ...]) -> RequestShape | None:
        shape: RequestShape | None = None
        keys = self._keys(names)
        if keys is not None and len(names) <= MAX_HEADERS:
            count = Counter(keys)
            plain = (
                all(count[key] <= 1 for key in SINGLE)
                and all(count[key] == 1 for key in REQUIRED)
                and count[b"Contact"] <= 1
                and count[b"Expires"] <= 1
                and not count[b"Proxy-Require"]
                and not count[b"Date"]
            )
            if plain:

                def at(key: bytes) -> tuple[int, int]:
                    if key not in count:
                        return _ABSENT, 0
                    i = keys.index(key)
                    return i + 1, len(names[i]) + 2

                dropped = {b"Max-Forwards", b"Route", *self._tenant_keys}
                kept = [i + 1 for i, key in enumerate(keys) if key not in dropped]
                routes = tuple(
                    (i + 1, len(names[i]) + 2) for i, key in enumerate(keys) if key == b"Route"
                )
                shape = (
                    *at(b"Via"), *at(b"From"), *at(b"To"), *at(b"Call-ID"), *at(b"CSeq"),
                    *at(b"Max-Forwards"), *at(b"Content-Length"), *at(b"Contact"),
                    *at(b"Expires"), routes, itemgetter(*kept),
                )  # fmt: skip
        if len(self._request_shapes) >= SHAPES_KEPT:
            self._request_shapes.clear()
        self._request_shapes[names] = shape
        return shape

    def _learn_response(self, names: tuple[bytes, ...]) -> ResponseShape | None:
        shape: ResponseShape | None = None
        keys = self._keys(names)
        if keys is not None and len(names) <= MAX_HEADERS:
            count = Counter(keys)
            vias = [i for i, key in enumerate(keys) if key == b"Via"]
            plain = (
                bool(vias)
                and all(count[key] == 1 for key in REQUIRED if key != b"Via")
                and count[b"Content-Length"] <= 1
            )
            if plain:
                cseq = keys.index(b"CSeq")
                length = keys.index(b"Content-Length") if b"Content-Length" in count else None
                tenants = {i for i, k in enumerate(keys) if k in self._tenant_keys}
                kept = [i + 1 for i in range(len(keys)) if i not in tenants and i != vias[0]]
                kept_first = [i + 1 for i in range(len(keys)) if i not in tenants]
                second = (vias[1] + 1, len(names[vias[1]]) + 2) if len(vias) > 1 else (_ABSENT, 0)
                shape = (
                    vias[0] + 1, len(names[vias[0]]) + 2,
                    *second,
                    cseq + 1, len(names[cseq]) + 2,
                    *((length + 1, len(names[length]) + 2) if length is not None else (_ABSENT, 0)),
                    itemgetter(*kept), itemgetter(*kept_first),
                )  # fmt: skip
        if len(self._response_shapes) >= SHAPES_KEPT:
            self._response_shapes.clear()
        self._response_shapes[names] = shape
        return shape

    def _learn_via(self, key: tuple[bytes, bytes]) -> ViaInfo | None:
        """What a Via that is ``before;branch=TOKEN`` + ``after`` means, or None when the
        grammar does not accept it as one via-parm (or it is one we leave alone)."""
        before, after = key
        info = None
        value = before + b";branch=" + _TEMPLATE_BRANCH + after
        parts = match_via(value) if b'"' not in value else None
        if parts is not None:
            via = parse_via(value)
            params = parse_params(via.raw_params)
            if params.get(b"branch") == _TEMPLATE_BRANCH:  # one branch parameter, this one
                address = via.host.strip(b"[]").decode("ascii", "replace")
                destination = via_destination(via)
                raw_params = via.raw_params
                identity = via_identity(via)
                info = ViaInfo(
                    transport=via.transport,
                    transport_name=via.transport_name,
                    host=via.host,
                    address=address,
                    port=via.port,
                    rport=via.rport is not None,
                    identity=identity[: len(identity) - len(_SWS.sub(b"", raw_params))],
                    params_at=len(value) - len(raw_params),
                    spaced=_SWS.search(raw_params) is not None,
                    conn=params.get(CONN_PARAM),
                    destination=destination,
                    routable=is_ip_literal(destination[0]) and destination[1] != 0,
                )
        if len(self._vias) >= MEMO_CAP:
            self._vias.clear()
        self._vias[key] = info
        return info

    def _learn_address(self, value: bytes) -> bytes | None:
        """The host of the URI in an address (b"" when it names none), or None when ``value``
        is not an address the grammar accepts."""
        host: bytes | None = None
        if is_address(value):
            host = uri_host(parse_address(value).uri) or b""
        if len(self._addresses) >= MEMO_CAP:
            self._addresses.clear()
        self._addresses[value] = host
        return host

    def _learn_contact(self, value: bytes) -> bool:
        try:
            check_contact(value)
            valid = True
        except MalformedMessage:
            valid = False
        if len(self._contacts) >= MEMO_CAP:
            self._contacts.clear()
        self._contacts[value] = valid
        return valid

    def _learn_plan(
        self, key: tuple[bytes, bytes], from_value: bytes, memo: SnapshotMemo
    ) -> Plan | None:
        """The edge's decision for requests for host ``key[0]`` from ``key[1]``: None when it
        is not simply "on to the core" (not served, no upstream, ...)."""
        host, _ = key
        edge = self._edge
        plan = None
        admission = memo.admit(host) if host else None
        choice = edge.upstream_choice(admission, memo) if admission is not None else None
        if choice is not None and not any((t.host, t.port) in self._ours for t in choice.targets):
            assert admission is not None
            target = choice.first
            out = edge.listener_toward(target)
            # Our Via (and Record-Route) name the listener toward the target: one for them all.
            if all(edge.listener_toward(t) is out for t in choice.targets):
                transport = target.transport.upper().encode()
                plan = Plan(
                    target,
                    admission,
                    b"Via: SIP/2.0/%s %s;branch=" % (transport, out.sent_by),
                    transport,
                    edge.tenant_lines(from_value, admission, memo),
                    choice if choice.spread is not None else None,
                )
        plans = memo.splice_plans
        if len(plans) >= MEMO_CAP:
            plans.clear()
        plans[key] = plan
        return plan

    def _learn_head(
        self, key: tuple[object, ...], arrival: Arrival, plan: Plan, memo: SnapshotMemo
    ) -> bytes:
        """The Record-Route pair for a phone's dialog-creating requests (``Edge.record_routes``)."""
        edge = self._edge
        out = edge.listener_toward(plan.target)
        head = edge.record_routes(arrival, plan.admission, out, memo)
        heads = memo.splice_heads
        if len(heads) >= MEMO_CAP:
            heads.clear()
        heads[key] = head
        return head


def _names(head: bytes, lines: list[bytes]) -> tuple[int, tuple[bytes, ...]] | None:
    """How many values start with spaces (see :func:`_padded`) and the header names in
    order, when every header line is a plain "Name: value"; else None."""
    padded = _padded(head)
    names = _NAMES.findall(head)
    if padded < 0 or len(names) + 1 != len(lines):
        return None
    return padded, tuple(names)


def _padded(head: bytes) -> int:
    """How many values in a header block start with spaces (which the parser strips, and sipp
    writes before Content-Length), or -1 when the block has what this path leaves to the
    parser: a tab, a space before a line break.  (A folded line shows as a name that is not a
    token, or as a line that is not "Name: value".)"""
    if b"\t" in head or b" \r\n" in head or head[-1:] == b" ":
        return -1
    return head.count(b":  ")


def _body(lines: list[bytes], at: int, offset: int, padded: int, rest: bytes) -> bytes | None:
    """The body Content-Length (line ``at``) delimits, its line rewritten as the parser leaves
    it when it is the one value written with spaces before it; None if that is not so."""
    value = lines[at][offset:]
    if padded:
        if padded > 1 or value[:1] != b" ":
            return None
        value = value.lstrip(b" ")
        lines[at] = lines[at][:offset] + value
    if not value.isdigit() or len(value) > 10:
        return None
    n = int(value)
    return rest[:n] if n <= len(rest) else None


def _ours_only(route: bytes, ours: dict[bytes, URI | None]) -> bool:
    """Whether the Route values (joined) are at most two ``<URI>`` known to name us: then the
    general path pops them all, and reads them as split here."""
    items = route.split(b",")
    if len(items) > OURS_PER_PASS:
        return False
    for item in items:
        item = item.strip(b" ")
        if item[:1] != b"<" or item.find(b">") != len(item) - 1 or item.count(b"<") != 1:
            return False
        if ours.get(item) is None:
            return False
    return True
