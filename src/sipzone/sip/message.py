"""SIP messages without I/O: bytes in, Request/Response out, and back (RFC 3261 §7, §20, §25).

Theory of operation: a message is split once into its start line, its header lines and its
body.  Every header line is filed under a canonical key (compact forms expanded, any case
folded), its value kept as raw bytes.  Nothing else is parsed up front: URIs, addresses, Via
and CSeq are parsed by the helpers below only when the edge asks for them, so an OPTIONS
keep-alive pays for the handful of fields it needs.  ``check_request`` applies the RFC's rules
to the fields the edge reads or forwards with meaning; every rule it breaks raises its own
:class:`MalformedMessage` subclass whose text names the problem.

The grammar lives in the named patterns below, next to the RFC section it comes from.  Header
values are unfolded (RFC 3261 §7.3.1: folding is equivalent to a single SP) before anything
else looks at them.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

from sipzone.model.errors import SipzoneError
from sipzone.net import MAX_PORT, is_port

# -- limits -----------------------------------------------------------------------------------

MAX_MESSAGE = 65535  # a UDP datagram; a stream message may not be larger either
MAX_HEADERS = 128  # longreq.dat (RFC 4475 §3.1.1.7) has 44
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5
MAX_FORWARDS = 255  # RFC 3261 §20.22 allows 0-255 in practice (RFC 4475 §3.1.2.4)
MAX_EXPIRES = 2**32 - 1
# RFC 3261 §19.1.2: the port a sip: URI or a Via without one means; sips: and TLS, 5061.
DEFAULT_PORT = 5060
DEFAULT_TLS_PORT = 5061
# Via entries a message may carry: Max-Forwards starts at 70, so a request that has taken
# more hops looped; refusing the rest bounds what one message can cost (RFC 3261 §16.3).
MAX_VIAS = 70

# -- errors -----------------------------------------------------------------------------------


class MalformedMessage(SipzoneError):
    """A peer sent bytes that are not a SIP message we accept; the text names the problem.

    ``status`` is the response code an element answers with when it can answer at all.
    ``message`` is whatever was parsed before the problem showed (None when not even the
    start line and headers could be split), so a reply can still echo Via, From, To, ...
    """

    status = 400

    def __init__(self, text: str, message: Message | None = None) -> None:
        super().__init__(text)
        self.message = message


class MessageTooLarge(MalformedMessage):
    """The message exceeds MAX_MESSAGE (a UDP datagram's worth): 513."""

    status = 513


class TooManyHeaders(MalformedMessage):
    """More than MAX_HEADERS header lines."""


class Incomplete(MalformedMessage):
    """The message ends before its header block or its body does."""


class BadStartLine(MalformedMessage):
    """The first line is neither a request line nor a status line."""


class BadVersion(MalformedMessage):
    """A SIP version other than SIP/2.0: 505."""

    status = 505


class BadStatusCode(MalformedMessage):
    """A status code that is not three digits 100-699."""


class BadHeaderLine(MalformedMessage):
    """A header line without a colon, or a name that is not a token."""


class BadContentLength(MalformedMessage):
    """Content-Length is not a number, missing on a stream, or more than follows."""


class MissingHeader(MalformedMessage):
    """A header every request (or relayed response) must carry is missing."""


class RepeatedHeader(MalformedMessage):
    """A header that may appear once (To, From, Call-ID, CSeq, ...) appears more often."""


class BadURI(MalformedMessage):
    """A URI that RFC 3261 §19.1 (or RFC 3966 for tel:) does not allow."""


class UnsupportedScheme(BadURI):
    """A Request-URI scheme other than sip, sips or tel: 416."""

    status = 416


class BadAddress(MalformedMessage):
    """A From, To, Contact or Route value that is neither name-addr nor addr-spec."""


class BadVia(MalformedMessage):
    """A Via that is not 'SIP/2.0/TRANSPORT host[:port]' with parameters."""


class TooManyVias(MalformedMessage):
    """More than MAX_VIAS Via entries: the request has looped (483)."""

    status = 483


class BadCSeq(MalformedMessage):
    """A CSeq that is not 'number METHOD', or whose method is not the request's."""


class BadCallID(MalformedMessage):
    """A Call-ID that is not word[@word]."""


class BadMaxForwards(MalformedMessage):
    """A Max-Forwards that is not a number 0-255."""


class BadExpires(MalformedMessage):
    """An Expires that is not a number 0-2**32-1."""


class BadDate(MalformedMessage):
    """A Date that is not an RFC 1123 date in GMT."""


# -- grammar (RFC 3261 §25.1 unless noted) ----------------------------------------------------

TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
# quoted-string: qdtext is anything but DQUOTE and backslash; quoted-pair excludes CR and LF.
QUOTED = rb'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
IPV6_REF = rb"\[[0-9A-Fa-f:.]+\]"
# gen-value = token / host / quoted-string
GEN_VALUE = rb"(?:" + TOKEN + rb"|" + IPV6_REF + rb"|" + QUOTED + rb")"
# generic-param, with the SWS RFC 3261 allows around ";" and "="
PARAMS = rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*" + GEN_VALUE + rb")?)*"
# §20.42 via-received = "received" EQUAL (IPv4address / IPv6address): IPv6 without brackets
# (RFC 5118 §4.5), so a Via parameter value may also be a bare IPv6 address.
VIA_VALUE = rb"(?:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*|" + TOKEN + rb"|" + IPV6_REF + rb"|" + QUOTED + rb")"
VIA_PARAMS = rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*" + VIA_VALUE + rb")?)*"

_TOKEN_RE = re.compile(TOKEN + rb"\Z")
# Takes parameters apart once a grammar above accepted them: any of the value forms.
_PARAM_RE = re.compile(rb";[ \t]*(" + TOKEN + rb")(?:[ \t]*=[ \t]*(" + VIA_VALUE + rb"))?")

# §7.1 Request-Line = Method SP Request-URI SP SIP-Version CRLF; exactly one SP between parts.
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([^ \t\r\n]+) (SIP/[0-9]+\.[0-9]+)\Z")
# §7.2 Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
_STATUS_LINE = re.compile(rb"(SIP/[0-9]+\.[0-9]+) ([0-9]+) ([^\r\n]*)\Z")
SIP_VERSION = b"SIP/2.0"

# §19.1.1 SIP-URI / SIPS-URI; the user part may hold ';' and '?' (RFC 4475 §3.1.1.9), so the
# host starts after the last '@'.
_HOST = rb"(?P<host>" + IPV6_REF + rb"|[^\[\]:;?@<>\s,\"]+)"
_HOSTPORT = re.compile(_HOST + rb"(?::(?P<port>[0-9]{1,5}))?(?P<rest>[;?].*)?\Z", re.S)
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*):")

# §20.10 / §20.20 / §20.39 name-addr / addr-spec followed by header parameters.  An addr-spec
# cannot hold ';', '?' or ',' (they would be taken as header syntax, §20).
DISPLAY_NAME = rb"(?:" + TOKEN + rb"(?:[ \t]+" + TOKEN + rb")*|" + QUOTED + rb")"
_ADDRESS = re.compile(
    rb"(?:(?:(?P<display>" + DISPLAY_NAME + rb")[ \t]*)?<(?P<uri>[^<>\s\"]+)>"
    rb"|(?P<spec>[^<>\s;,?\"]+))(?P<params>" + PARAMS + rb")[ \t]*\Z"
)

# §20.42 via-parm = sent-protocol LWS sent-by *( SEMI via-params ), with SWS around '/'.
_VIA_PARM = re.compile(
    rb"(?P<protocol>" + TOKEN + rb")[ \t]*/[ \t]*(?P<version>" + TOKEN + rb")[ \t]*/[ \t]*"
    rb"(?P<transport>" + TOKEN + rb")[ \t]+(?P<host>" + IPV6_REF + rb"|[A-Za-z0-9.\-]+)"
    rb"(?:[ \t]*:[ \t]*(?P<port>[0-9]{1,5}))?(?P<params>" + VIA_PARAMS + rb")[ \t]*"
)
LIST_COMMA = re.compile(rb",[ \t]*")

# §20.16 CSeq = 1*DIGIT LWS Method
_CSEQ = re.compile(rb"([0-9]+)[ \t]+(" + TOKEN + rb")\Z")
# §25.1 callid = word [ "@" word ]
_WORD = rb"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
CALL_ID = _WORD + rb"(?:@" + _WORD + rb")?"
_CALL_ID = re.compile(CALL_ID + rb"\Z")
# §20.17 Date = rfc1123-date, always GMT
_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    rb"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT\Z"
)
_DIGITS = re.compile(rb"[0-9]+\Z")
_FOLD = re.compile(rb"\r\n[ \t]+")

# Header keys are the canonical spelling for names we know (b"Via", b"Call-ID") and the lower
# case name for the rest.  §7.3.3 compact forms, plus the ones later RFCs registered:
COMPACT = {
    b"v": b"Via", b"f": b"From", b"t": b"To", b"i": b"Call-ID", b"m": b"Contact",
    b"l": b"Content-Length", b"k": b"Supported", b"s": b"Subject", b"c": b"Content-Type",
    b"e": b"Content-Encoding", b"o": b"Event", b"r": b"Refer-To", b"b": b"Referred-By",
    b"u": b"Allow-Events", b"x": b"Session-Expires", b"y": b"Identity",
    b"a": b"Accept-Contact", b"j": b"Reject-Contact", b"d": b"Request-Disposition",
}  # fmt: skip
KNOWN = frozenset(COMPACT.values()) | {
    b"CSeq", b"Max-Forwards", b"Record-Route", b"Route", b"Proxy-Require", b"Require",
    b"Unsupported", b"Allow", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Date",
    b"Expires", b"User-Agent", b"Server", b"Organization", b"Priority", b"Timestamp",
    b"Warning", b"Authorization", b"Proxy-Authorization", b"WWW-Authenticate",
    b"Proxy-Authenticate", b"Min-Expires", b"Path", b"P-Asserted-Identity",
    b"P-Preferred-Identity", b"Privacy", b"Reason", b"Diversion", b"Call-Info", b"Alert-Info",
    b"Content-Disposition", b"MIME-Version", b"In-Reply-To", b"Reply-To", b"Retry-After",
    b"RSeq", b"RAck", b"Min-SE", b"Replaces", b"Security-Client", b"Security-Server",
}  # fmt: skip
_SPELLING = {name.lower(): name for name in KNOWN}

# Headers a request may carry once only (RFC 3261 §20, "single-value" in RFC 4475 §3.3.8).
SINGLE = (b"To", b"From", b"Call-ID", b"CSeq", b"Max-Forwards", b"Content-Length")
REQUIRED = (b"Via", b"To", b"From", b"Call-ID", b"CSeq")

# Raw header name -> key.  Filled as names are seen so the common spellings cost one dict
# probe; capped so a peer inventing names cannot grow it without bound.
_KEYS: dict[bytes, bytes] = {name: name for name in KNOWN}
_KEYS.update(COMPACT)
_KEYS_CAP = 2048


def header_key(name: bytes) -> bytes:
    """The key for a header name as written (``v``, ``VIA``, ``Via `` -> ``Via``)."""
    key = _KEYS.get(name)
    if key is not None:
        return key
    stripped = name.rstrip(b" \t")
    if not _TOKEN_RE.match(stripped):
        raise BadHeaderLine(f"header name {name[:40]!r} is not a token")
    lower = stripped.lower()
    key = COMPACT.get(lower) or _SPELLING.get(lower) or lower
    if len(_KEYS) < _KEYS_CAP:
        _KEYS[name] = key
    return key


# -- values -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """What requests and responses share: header values by key, and a body.

    ``fields`` maps each key to its value; a header that appears on several lines has them
    joined with ", ", which RFC 3261 §7.3.1 makes equivalent, and its key in ``repeated``.
    ``head`` is the header block as received (unfolded), kept to forward headers verbatim.
    """

    fields: dict[bytes, bytes]
    head: bytes
    repeated: frozenset[bytes] = frozenset()
    body: bytes = b""

    def headers(self) -> list[tuple[bytes, bytes, bytes]]:
        """Every header line as ``(key, name as received, value)``, in order."""
        out = []
        for line in self.head.split(b"\r\n") if self.head else ():
            name, _, value = line.partition(b":")
            out.append((header_key(name), name.rstrip(b" \t"), value.strip(b" \t")))
        return out


@dataclass(slots=True)
class Request(Message):
    method: str = ""
    uri: bytes = b""

    @property
    def start_line(self) -> bytes:
        return b"%s %s SIP/2.0" % (self.method.encode(), self.uri)


@dataclass(slots=True)
class Response(Message):
    status: int = 0
    reason: bytes = b""

    @property
    def start_line(self) -> bytes:
        return b"SIP/2.0 %d %s" % (self.status, self.reason)


@dataclass(frozen=True, slots=True)
class URI:
    """A SIP, SIPS or tel URI (RFC 3261 §19.1, RFC 3966); other schemes keep only ``scheme``."""

    scheme: str
    user: bytes | None
    host: bytes  # as written: brackets kept for IPv6, any case; b"" for tel and unknown
    port: int | None
    params: dict[bytes, bytes | None] = field(default_factory=dict)
    headers: bytes | None = None  # the "?..." part, undecoded

    @property
    def is_ip(self) -> bool:
        return is_ip_literal(self.host)

    @property
    def transport(self) -> str:
        value = self.params.get(b"transport")
        return value.decode("ascii", "replace").lower() if value else "udp"


@dataclass(frozen=True, slots=True)
class Address:
    """name-addr or addr-spec with its header parameters (From, To, Contact, Route)."""

    display: bytes | None
    uri: bytes
    params: dict[bytes, bytes | None]

    @property
    def tag(self) -> bytes | None:
        return self.params.get(b"tag")


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm (RFC 3261 §20.42, RFC 3581 rport); parameters parsed when asked for."""

    transport_name: bytes
    host: bytes
    port: int | None
    raw_params: bytes
    end: int  # offset in the header value where this via-parm ends

    @property
    def transport(self) -> str:
        return self.transport_name.decode("ascii").lower()

    @property
    def params(self) -> dict[bytes, bytes | None]:
        return parse_params(self.raw_params) if self.raw_params else {}

    @property
    def branch(self) -> bytes | None:
        return self.params.get(b"branch")

    @property
    def received(self) -> bytes | None:
        return self.params.get(b"received")

    @property
    def rport(self) -> bytes | None:
        """The rport value; b"" when the parameter is present without one, None when absent."""
        if b"rport" not in self.raw_params.lower():
            return None
        params = self.params
        if b"rport" not in params:
            return None
        return params[b"rport"] or b""


# -- parsing ----------------------------------------------------------------------------------


def parse_message(data: bytes) -> Request | Response:
    """Parse one datagram.  Octets after Content-Length are ignored (RFC 3261 §18.3)."""
    if len(data) > MAX_MESSAGE:
        raise MessageTooLarge(f"message is {len(data)} octets; the limit is {MAX_MESSAGE}")
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        if not data.endswith(b"\r\n"):
            raise Incomplete("message ends inside its headers (no empty line after them)")
        # A datagram is complete as received: a missing final empty line loses nothing, and
        # reading on lets the checks name the real problem (RFC 4475 §3.1.2.15 does this).
        head, rest = data[:-2], b""
    message = parse_head(head)
    length = message.fields.get(b"Content-Length")
    if length is None:
        message.body = rest  # a datagram without Content-Length runs to its end (§18.3)
        return message
    n = content_length(message)
    if n > len(rest):
        raise BadContentLength(f"Content-Length is {n} but only {len(rest)} octets follow", message)
    message.body = rest[:n]
    return message


def parse_head(head: bytes) -> Request | Response:
    """Parse a start line and header block (without the terminating empty line)."""
    while head.startswith(b"\r\n"):  # RFC 3261 §7.5: ignore CRLFs before the start line
        head = head[2:]
    first, _, block = head.partition(b"\r\n")
    if b"\r\n " in block or b"\r\n\t" in block or block[:1] in (b" ", b"\t"):
        block = _FOLD.sub(b" ", block).lstrip(b" \t")
    lines = block.split(b"\r\n")
    if len(lines) > MAX_HEADERS:
        raise TooManyHeaders(f"message has {len(lines)} header lines; the limit is {MAX_HEADERS}")
    # The common message: every line "Name: value" with a canonical name, once each, and no
    # stray whitespace around values.  Then a dict built by C calls is already the answer;
    # whatever else (compact forms, odd case, repeats, extra spaces) takes the general path.
    fields: dict[bytes, bytes] | None = None
    repeated: frozenset[bytes] = frozenset()
    if not (
        b" \r\n" in block
        or b"\t\r\n" in block
        or b":  " in block
        or b": \t" in block
        or block.endswith((b" ", b"\t"))
    ):
        try:
            fields = dict([line.split(b": ", 1) for line in lines])
        except ValueError:
            fields = None
        else:
            if len(fields) != len(lines) or not fields.keys() <= KNOWN:
                fields = None
    if fields is None:
        fields, repeated = _fields(block)
    if first.startswith(b"SIP/"):
        return _status_line(first, fields, block, repeated)
    return _request_line(first, fields, block, repeated)


def _fields(block: bytes) -> tuple[dict[bytes, bytes], frozenset[bytes]]:
    fields: dict[bytes, bytes] = {}
    repeated = set()
    if not block:
        return fields, frozenset()
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadHeaderLine(f"header line {line[:40]!r} has no ':'")
        key = header_key(name)
        value = value.strip(b" \t")
        old = fields.get(key)
        if old is None:
            fields[key] = value
        else:
            fields[key] = old + b", " + value
            repeated.add(key)
    return fields, frozenset(repeated)


def _request_line(
    first: bytes, fields: dict[bytes, bytes], block: bytes, repeated: frozenset[bytes]
) -> Request:
    parts = first.split(b" ")
    if len(parts) == 3 and parts[2] == SIP_VERSION and parts[1] and parts[0]:
        method, uri = parts[0], parts[1]
        if _TOKEN_RE.match(method) and b"\t" not in uri:
            return Request(fields, block, repeated, b"", method.decode("ascii"), uri)
    # Keep what can be kept so a 400 can still be sent: the method is the first token.
    m = _REQUEST_LINE.match(first)
    if m is None:
        method = first.split(b" ", 1)[0]
        partial = None
        if _TOKEN_RE.match(method):
            partial = Request(fields, block, repeated, b"", method.decode("ascii"), b"")
        raise BadStartLine(
            f"request line {first[:80]!r} is not 'METHOD SP Request-URI SP SIP/2.0' "
            "(one space between parts, no spaces inside the URI)",
            partial,
        )
    partial = Request(fields, block, repeated, b"", m.group(1).decode("ascii"), m.group(2))
    raise BadVersion(f"SIP version {m.group(3).decode()} is not supported", partial)


def _status_line(
    first: bytes, fields: dict[bytes, bytes], block: bytes, repeated: frozenset[bytes]
) -> Response:
    m = _STATUS_LINE.match(first)
    if m is None:
        raise BadStartLine(f"status line {first[:80]!r} is not 'SIP/2.0 SP code SP reason'")
    if m.group(1) != SIP_VERSION:
        raise BadVersion(f"SIP version {m.group(1).decode()} is not supported")
    code = m.group(2)
    if len(code) != 3 or not b"100" <= code <= b"699":
        raise BadStatusCode(f"status code {code[:20].decode()} is not three digits 100-699")
    return Response(fields, block, repeated, b"", int(code), m.group(3))


def content_length(message: Message) -> int:
    value = message.fields.get(b"Content-Length")
    if value is None:
        return 0
    if b"Content-Length" in message.repeated:
        raise RepeatedHeader("Content-Length appears more than once", message)
    if not value.isdigit() or len(value) > 10:
        raise BadContentLength(f"Content-Length {value[:20]!r} is not a number", message)
    return int(value)


class StreamReader:
    """Frames messages on a stream transport by Content-Length (RFC 3261 §18.3), h11-style.

    Feed bytes with :meth:`receive_data`; :meth:`next_message` returns a message, None when
    more bytes are needed, or raises :class:`MalformedMessage` (after which the stream cannot
    be trusted: close it).  ``keepalives`` counts RFC 5626 double-CRLF pings seen, each of
    which wants a single CRLF back.  ``head_complete`` says whether the message in the buffer
    has its header block whole and waits for its body (the transport's deadlines differ).
    """

    __slots__ = ("_buffer", "head_complete", "keepalives")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.keepalives = 0
        self.head_complete = False

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole message as bytes, for the fast paths, when its header block says
        ``Content-Length: N`` in plain form and all of it is here; else None, and
        :meth:`next_message` frames and parses what the buffer holds (pings, a partial
        message, any other spelling), as it would have anyway.  A frame parses with
        :func:`parse_message` to what :meth:`next_message` returns, or raises as it would."""
        buf = self._buffer
        if buf[:2] == b"\r\n":
            return None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        at = buf.find(b"\r\nContent-Length: ", 0, end)
        if at < 0:
            return None
        start = at + len(b"\r\nContent-Length: ")
        value = bytes(buf[start : buf.find(b"\r\n", start, end + 2)]).lstrip(b" ")
        if not value.isdigit() or len(value) > 5:
            return None
        total = end + 4 + int(value)
        if total > MAX_MESSAGE or len(buf) < total:
            return None
        frame = bytes(buf[:total])
        del buf[:total]
        self.head_complete = False
        return frame

    def next_message(self) -> Request | Response | None:
        self.head_complete = False
        buf = self._buffer
        while buf.startswith(b"\r\n"):
            if buf.startswith(b"\r\n\r\n"):
                self.keepalives += 1
                del buf[:4]
            elif len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return None  # perhaps the first half of a ping
            else:
                del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_MESSAGE:
                raise MessageTooLarge(f"header block exceeds {MAX_MESSAGE} octets")
            return None
        message = parse_head(bytes(buf[:end]))
        if message.fields.get(b"Content-Length") is None:
            raise BadContentLength("Content-Length is required on a stream transport", message)
        n = content_length(message)
        if end + 4 + n > MAX_MESSAGE:
            raise MessageTooLarge(f"message would be {end + 4 + n} octets", message)
        if len(buf) < end + 4 + n:
            self.head_complete = True
            return None
        message.body = bytes(buf[end + 4 : end + 4 + n])
        del buf[: end + 4 + n]
        return message

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def in_message(self) -> bool:
        """Whether the buffer holds part of a message (not nothing, not half a CRLF ping);
        true only between :meth:`next_message` calls that returned None."""
        buf = self._buffer
        return bool(buf) and not (len(buf) < 4 and b"\r\n\r\n".startswith(buf))


# -- field parsers (on demand) ----------------------------------------------------------------


def is_call_id(value: bytes) -> bool:
    return _CALL_ID.match(value) is not None


def is_token(value: bytes) -> bool:
    return _TOKEN_RE.match(value) is not None


def match_via(value: bytes) -> tuple[bytes, bytes | None, bytes] | None:
    """(host, port, raw params) when ``value`` is exactly one well-formed via-parm, else None."""
    m = _VIA_PARM.match(value)
    if m is None or m.end() != len(value):
        return None
    host: bytes = m.group(4)
    port: bytes | None = m.group(5)
    if port is not None and int(port) > MAX_PORT:  # the grammar allows 0-99999
        return None
    params: bytes = m.group(6)
    return host, port, params


def is_address(value: bytes) -> bool:
    return _ADDRESS.match(value) is not None


def parse_params(text: bytes) -> dict[bytes, bytes | None]:
    """``;a=b;c`` -> {b"a": b"b", b"c": None}; names lower-cased (RFC 3261 §19.1.4)."""
    return {m.group(1).lower(): m.group(2) for m in _PARAM_RE.finditer(text)}


def parse_uri(text: bytes) -> URI:
    """Parse a Request-URI or the URI inside an address."""
    m = _SCHEME.match(text)
    if m is None:
        raise BadURI(f"URI {text[:80]!r} has no scheme")
    scheme = m.group(1).lower().decode("ascii")
    rest = text[m.end() :]
    if scheme == "tel":
        number, _, tel_params = rest.partition(b";")
        if not number:
            raise BadURI(f"tel URI {text[:80]!r} has no number")
        return URI("tel", number, b"", None, parse_params(b";" + tel_params) if tel_params else {})
    if scheme not in ("sip", "sips"):
        return URI(scheme, None, b"", None)
    user: bytes | None = None
    at = rest.rfind(b"@")
    if at >= 0:
        user, rest = rest[:at], rest[at + 1 :]
        if not user:
            raise BadURI(f"URI {text[:80]!r} has an empty user part")
    hp = _HOSTPORT.match(rest)
    if hp is None or not hp.group("host"):
        raise BadURI(f"URI {text[:80]!r} has no valid host")
    port = int(hp.group("port")) if hp.group("port") else None
    if port is not None and not is_port(port):
        raise BadURI(f"URI {text[:80]!r} has port {port} outside 1-65535")
    uri_params: dict[bytes, bytes | None] = {}
    headers = None
    tail = hp.group("rest")
    if tail:
        tail, q, hdrs = tail.partition(b"?")
        if q:
            headers = hdrs
        uri_params = parse_params(tail)
    return URI(scheme, user, hp.group("host"), port, uri_params, headers)


@functools.lru_cache(maxsize=4096)
def is_ip_literal(host: str | bytes) -> bool:
    """Whether ``host`` as written (IPv6 with or without brackets) is an address, not a name:
    the one answer to that question for the edge, its keep-alive path and its transport."""
    text = host.decode("latin-1") if isinstance(host, bytes) else host
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    elif ":" not in text and text[-1:] not in "0123456789":
        return False  # the common case, a name: no top-level domain ends in a digit
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def default_port(scheme_or_transport: str) -> int:
    """The port a URI or Via means when it names none (RFC 3261 §19.1.2, §18.2.2)."""
    return DEFAULT_TLS_PORT if scheme_or_transport in ("sips", "tls") else DEFAULT_PORT


def uri_host(uri: bytes) -> bytes | None:
    """The host of a sip/sips URI, the hot-path way: no full parse, None if not sip(s)."""
    if uri[:4].lower() == b"sip:":
        rest = uri[4:]
    elif uri[:5].lower() == b"sips:":
        rest = uri[5:]
    else:
        return None
    at = rest.rfind(b"@")
    if at >= 0:
        rest = rest[at + 1 :]
    if b"?" in rest:
        return None  # headers in a Request-URI: let check_uri name the problem
    if rest[:1] == b"[":
        end = rest.find(b"]")
        return rest[: end + 1] if end > 0 else None
    for stop in b":;?":
        cut = rest.find(stop)
        if cut >= 0:
            rest = rest[:cut]
    return rest or None


def parse_address(value: bytes, what: str = "address") -> Address:
    """Parse From/To/Contact/Route values (one address; not comma-separated lists)."""
    m = _ADDRESS.match(value)
    if m is None:
        raise BadAddress(f"{what} {value[:80]!r} is neither name-addr nor addr-spec")
    uri = m.group("uri") or m.group("spec")
    params = parse_params(m.group("params")) if m.group("params") else {}
    return Address(m.group("display"), uri, params)


def parse_via(value: bytes, start: int = 0) -> Via:
    """Parse the via-parm at ``start`` of a Via header value (RFC 3261 §20.42)."""
    m = _VIA_PARM.match(value, start)
    if m is None or (m.end() < len(value) and value[m.end() : m.end() + 1] != b","):
        raise BadVia(f"Via {value[start : start + 80]!r} is not 'SIP/2.0/TRANSPORT host[:port]'")
    transport, host, port, params = m.group(3, 4, 5, 6)
    number = int(port) if port else None
    if number is not None and number > MAX_PORT:  # the grammar allows 0-99999
        raise BadVia(f"Via {value[start : start + 80]!r} has port {number} above {MAX_PORT}")
    return Via(transport, host, number, params, m.end())


def split_vias(value: bytes) -> list[Via]:
    """Every via-parm of one Via header value (they may be comma-joined); more than
    :data:`MAX_VIAS` raise :class:`TooManyVias` before the rest is read."""
    vias = []
    start = 0
    while True:
        via = parse_via(value, start)
        vias.append(via)
        if via.end >= len(value):
            return vias
        if len(vias) >= MAX_VIAS:
            raise TooManyVias(f"more than {MAX_VIAS} Via entries: the request has looped")
        comma = LIST_COMMA.match(value, via.end)
        assert comma is not None  # parse_via checked the separator
        start = comma.end()


def parse_cseq(value: bytes) -> tuple[int, str]:
    m = _CSEQ.match(value)
    if m is None:
        raise BadCSeq(f"CSeq {value[:40]!r} is not 'number METHOD'")
    number = m.group(1)
    if len(number) > 10 or int(number) > MAX_CSEQ:
        raise BadCSeq(f"CSeq number {number[:20].decode()} exceeds 2**31-1")
    return int(number), m.group(2).decode("ascii")


def parse_max_forwards(value: bytes) -> int:
    if not _DIGITS.match(value) or len(value) > 5 or int(value) > MAX_FORWARDS:
        raise BadMaxForwards(f"Max-Forwards {value[:20]!r} is not a number 0-{MAX_FORWARDS}")
    return int(value)


# -- whole-request checks ---------------------------------------------------------------------


def check_request(request: Request) -> Via:
    """Apply RFC 3261's rules to the fields the edge reads or forwards with meaning.

    Raises the first problem found, carrying ``request`` so an answer can still be built;
    returns the top Via, which every answer needs.  Extension headers are not looked at: a
    proxy passes them on (RFC 3261 §16.6), and so does the edge.
    """
    try:
        return _check_request(request)
    except MalformedMessage as exc:
        if exc.message is None:
            exc.message = request
        raise


def _check_request(request: Request) -> Via:
    fields = request.fields
    if request.repeated:
        for key in SINGLE:
            if key in request.repeated:
                raise RepeatedHeader(f"{key.decode()} appears more than once", request)
    try:
        via, to, from_, call_id, cseq = (fields[k] for k in REQUIRED)
    except KeyError:
        missing = [k.decode() for k in REQUIRED if k not in fields]
        raise MissingHeader(f"required header {', '.join(missing)} missing", request) from None
    number, _, method = cseq.partition(b" ")
    if method.strip(b" \t") != request.method.encode() or not number.isdigit():
        _, cseq_method = parse_cseq(cseq)
        raise BadCSeq(
            f"CSeq method {cseq_method} does not match the request method {request.method}",
            request,
        )
    if len(number) > 10 or int(number) > MAX_CSEQ:
        raise BadCSeq(f"CSeq number {number[:20].decode()} exceeds 2**31-1", request)
    if not _ADDRESS.match(from_):
        raise BadAddress(f"From {from_[:80]!r} is neither name-addr nor addr-spec", request)
    if not _ADDRESS.match(to):
        raise BadAddress(f"To {to[:80]!r} is neither name-addr nor addr-spec", request)
    if not _CALL_ID.match(call_id):
        raise BadCallID(f"Call-ID {call_id[:60]!r} is not word[@word]", request)
    top = parse_via(via)
    if top.end < len(via):
        split_vias(via)
    max_forwards = fields.get(b"Max-Forwards")
    if max_forwards is not None:
        parse_max_forwards(max_forwards)
    if b"Content-Length" in fields:
        content_length(request)
    # Rarely present: each costs nothing when absent.
    if b"Date" in fields and not _DATE.match(fields[b"Date"]):
        raise BadDate(f"Date {fields[b'Date'][:40]!r} is not an RFC 1123 date in GMT", request)
    expires = fields.get(b"Expires")
    if expires is not None and (not expires.isdigit() or int(expires) > MAX_EXPIRES):
        raise BadExpires(f"Expires {expires[:20]!r} is not a number 0-2**32-1", request)
    return top


_LIST_ITEM = re.compile(rb"(?:" + QUOTED + rb"|<[^<>]*>|[^,\"<>])+")


def split_addresses(value: bytes) -> list[bytes]:
    """Split a comma-joined address list (Contact, Route); commas inside quotes or <> stay."""
    return [m.group(0).strip(b" \t") for m in _LIST_ITEM.finditer(value)]


def check_contacts(message: Message) -> None:
    """Every Contact value is ``*`` or a list of addresses (RFC 3261 §20.10, RFC 4475 §3.1.2.13)."""
    value = message.fields.get(b"Contact")
    if value is not None:
        check_contact(value)


def check_contact(value: bytes) -> None:
    """A Contact header value is ``*`` or a list of addresses; raises :class:`BadAddress`."""
    if value == b"*":
        return
    for item in split_addresses(value):
        parse_address(item, "Contact")


def check_response(response: Response) -> None:
    """The rules a relayed response must meet: Via and a sane CSeq (RFC 4475 §3.1.2.5)."""
    for key in REQUIRED:
        if key not in response.fields:
            raise MissingHeader(f"required header {key.decode()} is missing", response)
    parse_cseq(response.fields[b"CSeq"])


def check_uri(text: bytes) -> URI:
    """Parse a Request-URI and apply the rules for one (RFC 3261 §19.1.5, RFC 4475 §3.1.2.11)."""
    if text[:1] == b"<":
        raise BadURI(f"Request-URI {text[:80]!r} is enclosed in <>")
    uri = parse_uri(text)
    if uri.scheme not in ("sip", "sips", "tel"):
        raise UnsupportedScheme(f"Request-URI scheme {uri.scheme!r} is not supported")
    if uri.headers is not None:
        raise BadURI(f"Request-URI {text[:80]!r} carries headers ('?'), which it may not")
    return uri


# -- the way back: Via stamping and response destinations (RFC 3261 §18.2, RFC 3581) -----------

_STRIP_VIA_ADDR = re.compile(rb";[ \t]*(?:rport|received)(?:[ \t]*=[ \t]*[^;,\s]*)?", re.I)


def stamp_via(value: bytes, top: Via, addr: tuple[str, int]) -> bytes:
    """The Via header value with its top entry given ``received`` (RFC 3261 §18.2.1) and, if it
    asked with a bare ``rport``, the source port (RFC 3581): what the way back needs."""
    source = addr[0]
    host = top.host.strip(b"[]").decode("ascii", "replace")
    if top.rport is None:
        if host == source:
            return value
        first = _STRIP_VIA_ADDR.sub(b"", value[: top.end].rstrip(b" \t"))
        return first + b";received=" + source.encode() + value[top.end :]
    first = _STRIP_VIA_ADDR.sub(b"", value[: top.end].rstrip(b" \t"))
    return first + b";received=%s;rport=%d" % (source.encode(), addr[1]) + value[top.end :]


def via_destination(via: Via) -> tuple[str, int]:
    """Where a response goes for this Via (RFC 3261 §18.2.2, RFC 3581 §4): received or the
    sent-by host, at rport or the sent-by port."""
    host = (via.received or via.host).strip(b"[]").decode("ascii", "replace")
    rport = via.rport
    if rport:
        return host, int(rport) if rport.isdigit() else 0  # 0: nowhere to send to
    return host, via.port or default_port(via.transport)


# -- responses we originate (RFC 3261 §8.2.6) ---------------------------------------------------

# Via, From, Call-ID and CSeq copied, To with our tag added (below), then ``tail``: the rest of
# the header block, the empty line and any body.
RESPONSE_HEAD = b"SIP/2.0 %d %s\r\nVia: %s\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s\r\n%s"
# The To tag of a response we originate: a CRC of the Via it answers, so a retransmission is
# answered with the same tag by any worker (RFC 3261 §8.2.6.2 wants it stable per request).
TO_TAG = b";tag=sz%08x"
EMPTY_TAIL = b"Content-Length: 0\r\n\r\n"


# -- plain OPTIONS in a known header order (the keep-alive hot path) ---------------------------

# Each value as the edge's keep-alive path takes it (``Edge.answer_keepalive``), in named
# groups: Via up to its first ";branch=" and a token branch after it; From up to its last
# ";tag=" and a token tag; Call-ID per §25.1; "N OPTIONS"; Max-Forwards 1-255 in at most three
# digits; a zero Content-Length.  No value may hold CR or LF.
_PLAIN_VALUES = {
    b"Via": rb"(?P<via>(?P<before>[^;\r\n]*(?:;(?!branch=)[^;\r\n]*)*);branch=" + TOKEN + rb")",
    b"From": rb"(?P<from>(?P<address>[^\r\n]*);tag=" + TOKEN + rb")",
    b"To": rb"(?P<to>[^\r\n]*)",
    b"Call-ID": rb"(?P<call_id>" + CALL_ID + rb")",
    b"CSeq": rb"(?P<cseq>(?P<number>[0-9]{1,10}) OPTIONS)",
    b"Max-Forwards": rb"(?:0{0,2}[1-9]|0?[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])",
    b"Content-Length": rb"0",
}
PLAIN_GROUPS = ("uri", "to", "via", "before", "from", "address", "call_id", "cseq", "number")


@functools.lru_cache(maxsize=256)
def plain_options_pattern(names: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """A pattern for a whole bodiless OPTIONS datagram whose header lines are ``names`` in
    this order, each ``Name: value`` once, values as in ``_PLAIN_VALUES`` (any other header's
    value unchecked).  It must name Via, From, To, Call-ID, CSeq and Max-Forwards."""
    lines = b"".join(
        b"\r\n" + re.escape(name) + b": " + _PLAIN_VALUES.get(name, rb"[^\r\n]*") for name in names
    )
    return re.compile(rb"OPTIONS (?P<uri>[^ \r\n]+) SIP/2\.0" + lines + rb"\r\n\r\n\Z")
