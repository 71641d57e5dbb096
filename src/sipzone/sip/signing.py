"""What the edge signs with the installation's secret: the branch of every request it forwards,
so that only responses to those are relayed (RFC 3261 §16.11 stateless proxying, made safe),
and the flow tokens that let the core reach a phone through the edge without the edge keeping
state (RFC 5626 §5.3 style).

Our branch is ``z9hG4bKsz`` + a loop hash + an HMAC.  The loop hash covers the fields a looping
request keeps (Request-URI, From tag, Call-ID, CSeq number, Route: §16.6 step 8), and the HMAC,
keyed with the store's secret (setting ``sip_branch_secret``), covers what a response's way back
depends on: the Via below ours as we forwarded it, the connection the request came in on, our
Via's transport.  Both are functions of the request, so retransmissions, the CANCEL and the ACK
of a non-2xx answer get the INVITE's branch on any worker or node.  :class:`Keys` holds the
current secret and the one before the last rotation, which is still accepted.

A flow token names where a phone is reached: the transport, its source address and port as we
saw them (its NAT binding) and, on a stream, the connection it opened.  The edge writes it in
the user part of a URI of its own (``sip:szf1.TOKEN@EDGE:PORT;lr``: the Path of a REGISTER,
the Record-Route facing the core), signed; a request that comes back through that URI goes
out over that flow, and a token no key of ours signed is refused, never followed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import socket
import struct
from collections.abc import Mapping

from sipzone.sip import BRANCH_SECRET, BRANCH_SECRET_PREVIOUS
from sipzone.sip.message import Request, Via, parse_address
from sipzone.sip.values import Target

MAGIC_COOKIE = b"z9hG4bK"  # RFC 3261 §8.1.1.7
OUR_BRANCH = MAGIC_COOKIE + b"sz"  # every branch we generate starts so
LOOP_HASH = 10  # hex digits after OUR_BRANCH: what a looping request keeps (§16.3 step 4)
BRANCH_MAC = 20  # hex digits after those: the HMAC that vouches for the way back (80 bits)
BRANCH_LEN = len(OUR_BRANCH) + LOOP_HASH + BRANCH_MAC
CONN_PARAM = b"sz-c"  # in our Via: the stream connection the request came in on
_SWS = re.compile(rb"[ \t]+")

FLOW_PREFIX = b"szf1."  # the user part of a URI of ours that carries a flow token (version 1)
FLOW_MAC = 10  # bytes of HMAC in a flow token (80 bits, as in the branch)
_FLOW_LABEL = b"sipzone flow\n"  # keeps a flow MAC from ever passing for another MAC
_FLOW_HEAD = struct.Struct("!BHI")  # transport, port, connection (0: none); then the address
_TRANSPORT_CODES = {"udp": 0, "tcp": 1, "tls": 2}
_TRANSPORTS = {code: name for name, code in _TRANSPORT_CODES.items()}
FLOW_TOKENS_KEPT = 65536  # tokens a Keys remembers before starting over


class Mac:
    """HMAC-SHA256 (RFC 2104) under one key, with the key's inner and outer blocks hashed once:
    the same digest as ``hmac.digest(key, message, "sha256")`` at a third of its cost, which
    OpenSSL 3 spends setting a MAC up for every message."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class Keys:
    """The installation's signing keys, current first, then the previous one (still accepted)."""

    __slots__ = ("_macs", "_tokens", "keys")

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        assert keys, "at least one key"
        self.keys = keys
        self._macs = tuple(Mac(key) for key in keys)
        self._tokens: dict[Target, bytes] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> Keys | None:
        """The keys the store holds, or None when it holds none (a store `init` never saw)."""
        keys = tuple(
            settings[name].encode()
            for name in (BRANCH_SECRET, BRANCH_SECRET_PREVIOUS)
            if settings.get(name)
        )
        return cls(keys) if keys else None

    def branch(self, loop: bytes, below: bytes, conn: bytes, transport: bytes) -> bytes:
        """Our branch for a request with loop hash ``loop`` whose Via below ours, as forwarded
        (stamped), has the :func:`via_identity` ``below``, that came in on connection ``conn``
        (b"" for none) and leaves over ``transport`` (upper case)."""
        return OUR_BRANCH + loop + _branch_mac(self._macs[0], loop, below, conn, transport)

    def vouches(self, top: Via, below: Via) -> bool:
        """Whether the branch of our Via ``top`` is what we computed for ``below``, under the
        current secret or the previous one."""
        conn = top.params.get(CONN_PARAM) or b""
        return self.vouch(top.branch or b"", conn, top.transport_name, via_identity(below))

    def vouch(self, branch: bytes, conn: bytes, transport: bytes, below: bytes) -> bool:
        """Whether ``branch`` (of our Via, which names ``transport`` and connection ``conn``) is
        what we computed for the Via below ours with the :func:`via_identity` ``below``."""
        if len(branch) != BRANCH_LEN:
            return False
        loop = branch[len(OUR_BRANCH) : len(OUR_BRANCH) + LOOP_HASH]
        mac = branch[len(OUR_BRANCH) + LOOP_HASH :]
        transport = transport.upper()
        for key in self._macs:
            if hmac.compare_digest(mac, _branch_mac(key, loop, below, conn, transport)):
                return True
        return False

    def flow_token(self, flow: Target) -> bytes | None:
        """The flow token (with its prefix) for ``flow``, whose host is an address; None for
        an address no token can hold (a scoped IPv6 one)."""
        token = self._tokens.get(flow)
        if token is None:
            family = socket.AF_INET6 if ":" in flow.host else socket.AF_INET
            try:
                address = socket.inet_pton(family, flow.host)
            except OSError:
                return None
            if not 0 <= (flow.conn or 0) <= 0xFFFFFFFF:
                return None  # not a connection id a token can hold
            code = _TRANSPORT_CODES[flow.transport]
            payload = _FLOW_HEAD.pack(code, flow.port, flow.conn or 0) + address
            mac = self._macs[0].digest(_FLOW_LABEL + payload)[:FLOW_MAC]
            token = FLOW_PREFIX + base64.urlsafe_b64encode(payload + mac).rstrip(b"=")
            if len(self._tokens) >= FLOW_TOKENS_KEPT:
                self._tokens.clear()
            self._tokens[flow] = token
        return token

    def flow(self, token: bytes) -> Target | None:
        """The flow ``token`` names, or None unless a key of ours signed exactly it."""
        body = token[len(FLOW_PREFIX) :]
        if not token.startswith(FLOW_PREFIX) or len(body) > 64:
            return None
        try:
            raw = base64.b64decode(body + b"=" * (-len(body) % 4), b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        head = _FLOW_HEAD.size
        if len(raw) not in (head + 4 + FLOW_MAC, head + 16 + FLOW_MAC):
            return None
        payload, mac = raw[:-FLOW_MAC], raw[-FLOW_MAC:]
        if not any(
            hmac.compare_digest(mac, key.digest(_FLOW_LABEL + payload)[:FLOW_MAC])
            for key in self._macs
        ):
            return None
        code, port, conn = _FLOW_HEAD.unpack(payload[:head])
        transport = _TRANSPORTS.get(code)
        if transport is None:
            return None
        family = socket.AF_INET if len(payload) == head + 4 else socket.AF_INET6
        return Target(transport, socket.inet_ntop(family, payload[head:]), port, conn or None)


def loop_hash(request: Request) -> bytes:
    """The part of our branch a request keeps if it comes back to us unchanged (RFC 3261 §16.6
    step 8): Request-URI, From tag, Call-ID, CSeq number and Route.  No To tag and no method,
    so the INVITE, its CANCEL and the ACK of a non-2xx answer share it (§16.11)."""
    fields = request.fields
    from_tag = parse_address(fields[b"From"], "From").tag or b""
    cseq = fields[b"CSeq"].split(None, 1)[0]
    return loop_hash_of(request.uri, from_tag, fields[b"Call-ID"], cseq, fields.get(b"Route", b""))


def loop_hash_of(uri: bytes, from_tag: bytes, call_id: bytes, cseq: bytes, route: bytes) -> bytes:
    """:func:`loop_hash` from its parts: CSeq the number alone, Route every value joined."""
    basis = b"\n".join((uri, from_tag, call_id, cseq, route))
    return hashlib.blake2b(basis, digest_size=LOOP_HASH // 2).hexdigest().encode()


def via_identity(via: Via) -> bytes:
    """What our branch's HMAC covers of the Via below ours as we forwarded it (received/rport
    stamped): all of it but spacing, which a UAS may redo, and the case of the transport and
    host."""
    port = b"%d" % via.port if via.port is not None else b""
    return b"%s %s:%s%s" % (
        via.transport_name.upper(),
        via.host.lower(),
        port,
        _SWS.sub(b"", via.raw_params),
    )


def _branch_mac(key: Mac, loop: bytes, below: bytes, conn: bytes, transport: bytes) -> bytes:
    """The HMAC in our branch, over what a response's way back depends on: the Via below ours
    (its :func:`via_identity`), the connection the request came in on, the transport of our
    Via, and the loop hash."""
    message = b"\n".join((loop, below, conn, transport))
    return key.digest(message)[: BRANCH_MAC // 2].hex().encode()
